"""Bench suite ``parallel``: the teacher with its tokens split over 1, 2, ... processes (diffusers' context
parallelism, Ulysses attention), uncached and with AdaCache.

Degree 1 runs in this process; each higher degree is one ``torchrun``-style launch of this module as a worker
(``python -m torch.distributed.run --nproc_per_node N -m reelkit.eval.bench.parallel OUT``) that generates the
same prompts with the same seeds. Degrees: 1 and 2 on a CPU (gloo), up to the GPU count on CUDA (NCCL).

Rows ``ulysses_N`` and ``ulysses_N_adacache`` (``N = 1``: one process). Figures: ``latency_s`` (median seconds of
one clip, prompt to pixels), ``speedup`` (the one-process row of the same method over this one),
``peak_mem_bytes`` (the largest peak of any rank over one clip: CUDA's allocator on a GPU, torch's MemTracker on a
CPU), ``psnr_db`` (mean over prompts against the one-process clip of the same method), ``computed_steps`` and
``schedules_identical`` (every rank took the one-process run's compute / reuse decisions). On a CPU the processes
share the cores, so the timings show the overhead of the exchange, not a speedup.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from reelkit.eval.bench import BenchContext
from reelkit.eval.bench.harness import heldout_prompts
from reelkit.metrics import video_psnr

NUM_PROMPTS = {False: 8, True: 2}
STEPS = {False: 50, True: 10}
FRAMES, SIZE, GUIDANCE = 17, 64, 5.0
METHODS = ("plain", "adacache")
MODEL = "teacher"  # "tiny": a random tiny pipeline (tests)
TARGET_PSNR = 40.0
MAX_PSNR = 100.0  # identical clips have infinite PSNR; JSON has no infinity
WORKER_TIMEOUT_S = 3600


def _pipeline(model: str):
    from reelkit.pipelines.text_to_video import load_text_to_video, tiny_pipeline

    pipe = tiny_pipeline(open_gates=True) if model == "tiny" else load_text_to_video(model)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _size(model: str) -> int:
    return 32 if model == "tiny" else SIZE


def measure(pipe, model: str, prompts: list[str], steps: int, repeats: int) -> dict:
    """Per method: the clips, per-clip seconds, one clip's peak memory and the AdaCache decisions."""
    from reelkit.accel.adacache import AdaCacheConfig, ada_cache_stats, apply_ada_cache, remove_ada_cache
    from reelkit.generation import GenerationSettings, generate_video
    from reelkit.memory import peak_memory_bytes

    size = _size(model)
    device = pipe.transformer.device

    settings = GenerationSettings(steps, GUIDANCE, 0, FRAMES, size)

    def clip(prompt: str, seed: int) -> torch.Tensor:
        return generate_video(pipe, prompt, settings, seed=seed).float().cpu()

    results = {}
    for method in METHODS:
        if method == "adacache":
            apply_ada_cache(pipe.transformer, AdaCacheConfig(codebook="fast"))
        clips, seconds, decisions = [], [], []
        for seed, prompt in enumerate(prompts):
            clips.append(clip(prompt, seed))  # also the warm-up
            if method == "adacache":
                decisions.append({k: list(v.computed_steps) for k, v in ada_cache_stats(pipe.transformer).items()})
            for _ in range(repeats):
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                start = time.perf_counter()
                clip(prompt, seed)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                seconds.append(time.perf_counter() - start)
        peak = peak_memory_bytes(lambda: clip(prompts[0], 0), pipe.transformer, device=device)
        if method == "adacache":
            remove_ada_cache(pipe.transformer)
        results[method] = {"clips": torch.stack(clips), "seconds": seconds, "peak_mem_bytes": peak,
                           "decisions": decisions}
    return results


def worker(out_dir: str) -> None:
    """One rank of a degree-N run: read the settings, split the teacher, measure, save."""
    import torch.distributed as dist

    from reelkit.parallel import enable_context_parallel

    out = Path(out_dir)
    settings = json.loads((out / "settings.json").read_text())
    torch.set_num_threads(settings["threads"])
    pipe = _pipeline(settings["model"])
    enable_context_parallel(pipe.transformer, "ulysses", int(os.environ["WORLD_SIZE"]))
    if torch.cuda.is_available():
        pipe.to(f"cuda:{torch.cuda.current_device()}")
    results = measure(pipe, settings["model"], settings["prompts"], settings["steps"], settings["repeats"])
    rank = dist.get_rank()
    if rank != 0:
        for method in results.values():
            method.pop("clips")
    torch.save(results, out / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(degree: int, settings: dict) -> list[dict]:
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)
        (out / "settings.json").write_text(json.dumps(settings))
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(degree), "--master_port",
                   str(_free_port()), "-m", "reelkit.eval.bench.parallel", str(out)]
        env = {**os.environ, "OMP_NUM_THREADS": str(settings["threads"])}
        done = subprocess.run(command, capture_output=True, text=True, timeout=WORKER_TIMEOUT_S, env=env)
        if done.returncode != 0:
            from reelkit.errors import ReelkitError

            lines = [line for line in done.stderr.splitlines() if "Error" in line] or done.stderr.splitlines()[-1:]
            raise ReelkitError(f"bench parallel: the {degree}-process run failed: {lines[-1] if lines else '?'}")
        return [torch.load(out / f"rank{rank}.pt", weights_only=False) for rank in range(degree)]


def _degrees(device: torch.device) -> list[int]:
    if device.type == "cuda":
        count = torch.cuda.device_count()
        return [d for d in (1, 2, 4, 8) if d <= count]
    return [1, 2]


def _row(degree: int, method: str, ranks: list[dict], alone: dict) -> dict:
    mine = [rank[method] for rank in ranks]
    clips = mine[0]["clips"]
    psnr = statistics.fmean(min(video_psnr(a, b), MAX_PSNR) for a, b in zip(clips, alone["clips"], strict=True))
    latency = statistics.median(max(values) for values in zip(*(m["seconds"] for m in mine), strict=True))
    row = {"method": f"ulysses_{degree}" + ("" if method == "plain" else f"_{method}"), "degree": degree,
           "latency_s": latency, "speedup": statistics.median(alone["seconds"]) / latency,
           "peak_mem_bytes": max(m["peak_mem_bytes"] for m in mine), "psnr_db": psnr}
    if method == "adacache":
        row["computed_steps"] = statistics.fmean(len(d["cond"][0]) for d in mine[0]["decisions"])
        row["schedules_identical"] = all(m["decisions"] == alone["decisions"] for m in mine)
    return row


def run(ctx: BenchContext) -> list[dict]:
    prompts, _ = heldout_prompts(NUM_PROMPTS[ctx.quick])
    steps = STEPS[ctx.quick]
    threads = max(1, (os.cpu_count() or 2) // 2) if ctx.device.type == "cpu" else 1
    settings = {"model": MODEL, "prompts": prompts, "steps": steps, "repeats": ctx.repeats, "threads": threads}
    degrees = _degrees(ctx.device)
    ctx.settings.update({"num_prompts": len(prompts), "steps": steps, "frames": FRAMES, "size": _size(MODEL),
                         "guidance": GUIDANCE, "degrees": degrees, "attention": "ulysses", "model": MODEL,
                         "threads_per_process": threads, "adacache_codebook": "fast"})
    advance = ctx.progress("parallel degrees", len(degrees))
    torch.set_num_threads(threads)
    pipe = _pipeline(MODEL).to(ctx.device)
    alone = measure(pipe, MODEL, prompts, steps, ctx.repeats)
    advance()
    rows = [_row(1, method, [alone], alone[method]) for method in METHODS]
    for degree in degrees[1:]:
        ranks = _launch(degree, settings)
        rows += [_row(degree, method, ranks, alone[method]) for method in METHODS]
        advance()
    split = [row for row in rows if row["degree"] > 1]
    ctx.settings["targets"] = {
        "psnr_db_at_least": TARGET_PSNR,
        "met_psnr": all(row["psnr_db"] >= TARGET_PSNR for row in split),
        "met_identical_schedules": all(row.get("schedules_identical", True) for row in rows),
    }
    return rows


if __name__ == "__main__":
    worker(sys.argv[1])
