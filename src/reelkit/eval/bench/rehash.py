"""Bench suite ``rehash``: Step Rehash on the teacher against DeepCache-style uniform reuse, in one process.

Every row generates the same held-out prompts with the same seeds (``STEPS`` steps, guidance ``GUIDANCE``).
Key steps for Step Rehash are searched (Algorithm 1) on a calibration run over *separate* prompts; the
baseline spends the same number of full steps on evenly spaced key steps, with the same mechanism (the
deep blocks skipped, their stored residual added). Rows:

* ``full``: the plain model;
* ``step_rehash_K`` (reelkit's default search: keys placed to maximise the summed distance-based
  similarity of each step to its key) and ``uniform_reuse_K`` for each budget ``K`` of full steps in
  ``BUDGETS``; and, for the budgets in ``GREEDY_BUDGETS``, ``step_rehash_greedy_K``: the paper's
  Algorithm 1 as published (cosine similarity, greedy threshold), for reference.

Figures: ``latency_s`` (median wall clock of one clip, prompt to pixels), ``speedup`` (median over
``repeats`` rounds of the plain clip's time over the rehashed one's, the two run back to back on the same
prompt, which cancels the swings of a shared machine), ``denoise_speedup`` (the same for the denoising loop
alone), ``full_steps`` (key steps per generation), ``flops`` (one clip, ``FlopCounterMode``), ``psnr_db`` /
``ssim`` against the full clip (mean over prompts) and judge adherence. ``settings["targets"]`` records the
issue's targets (``TARGET_SPEEDUP`` at ``TARGET_PSNR``; better PSNR than uniform reuse at every budget) and
whether they are met.
"""

from __future__ import annotations

import copy
import statistics
import time

import torch

from reelkit.eval.adherence import judge_clips, mean_adherence, prompt_adherence
from reelkit.eval.bench import BenchContext
from reelkit.eval.bench.harness import heldout_prompts, load_generator_and_judge
from reelkit.metrics import video_psnr, video_ssim

NUM_PROMPTS = {False: 8, True: 2}
CALIBRATION_PROMPTS = {False: 4, True: 1}
STEPS = {False: 50, True: 10}
BUDGETS = {False: (10, 15, 20, 25), True: (4,)}
GREEDY_BUDGETS = {False: (10, 15), True: ()}  # budgets that also get the paper's greedy search as a row
GUIDANCE = 5.0
FRAMES, SIZE = 17, 64
TARGET_PSNR, TARGET_SPEEDUP = 30.0, 1.8
REHASH = {}  # extra StepRehashConfig settings (shallow_blocks, similarity_feature, ...); tests set them
PIPELINE = None  # a loader returning the pipeline to bench (tests swap in a tiny one); None: bundled teacher
JUDGE = None
MAX_PSNR = 100.0  # identical clips have infinite PSNR; JSON has no infinity


def _load():
    return load_generator_and_judge(PIPELINE, JUDGE)


def _clip(pipe, prompt: str, seed: int, steps: int) -> tuple[torch.Tensor, float, float]:
    """One clip, its wall-clock seconds, and the seconds of its denoising loop (up to the last step's end)."""
    marks = []

    def on_step(pipeline, step, timestep, tensors):
        marks.append(time.perf_counter())
        return tensors

    started = time.perf_counter()
    video = pipe(prompt, num_frames=FRAMES, height=SIZE, width=SIZE, num_inference_steps=steps,
                 guidance_scale=GUIDANCE, generator=torch.Generator().manual_seed(seed),
                 callback_on_step_end=on_step).frames[0]
    return video.cpu(), time.perf_counter() - started, marks[-1] - started


def _paired_timing(plain, pipe, prompts: list[str], steps: int, rounds: int) -> dict:
    """Rounds of one plain and one rehashed clip back to back (prompt and seed ``r`` in round ``r``)."""
    latencies, ratios, denoise_ratios = [], [], []
    for r in range(rounds):
        prompt = prompts[r % len(prompts)]
        _, plain_seconds, plain_denoise = _clip(plain, prompt, r, steps)
        _, seconds, denoise = _clip(pipe, prompt, r, steps)
        latencies.append(seconds)
        ratios.append(plain_seconds / seconds)
        denoise_ratios.append(plain_denoise / max(denoise, 1e-9))
    return {"latency_s": statistics.median(latencies), "speedup": statistics.median(ratios),
            "denoise_speedup": statistics.median(denoise_ratios)}


def _flops(pipe, prompt: str, steps: int) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        _clip(pipe, prompt, 0, steps)
    return int(counter.get_total_flops())


def _quality(videos, references) -> dict:
    psnr = [min(video_psnr(v, r), MAX_PSNR) for v, r in zip(videos, references, strict=True)]
    ssim = [video_ssim(v, r) for v, r in zip(videos, references, strict=True)]
    return {"psnr_db": sum(psnr) / len(psnr), "ssim": sum(ssim) / len(ssim)}


def targets(rows: list[dict]) -> dict:
    """The issue's targets read off the rows: the best Step Rehash speedup at ``TARGET_PSNR`` or more, and
    Step Rehash's PSNR against uniform reuse at each budget."""
    rehash = [r for r in rows if r["method"].startswith("step_rehash_") and "greedy" not in r["method"]]
    good = [r["speedup"] for r in rehash if r["psnr_db"] >= TARGET_PSNR]
    best = max(good, default=None)
    by_method = {r["method"]: r for r in rows}
    versus = []
    for row in rehash:
        uniform = by_method.get(row["method"].replace("step_rehash_", "uniform_reuse_"))
        if uniform is not None:
            versus.append({"full_steps": row["full_steps"], "step_rehash_psnr_db": round(row["psnr_db"], 3),
                           "uniform_reuse_psnr_db": round(uniform["psnr_db"], 3),
                           "gain_db": round(row["psnr_db"] - uniform["psnr_db"], 3)})
    return {"speedup_at_target_psnr": best, "speedup_target_met": best is not None and best >= TARGET_SPEEDUP,
            "versus_uniform": versus, "beats_uniform_at_every_budget": bool(versus) and all(
                v["gain_db"] > 0 for v in versus)}


def run(ctx: BenchContext) -> list[dict]:
    from reelkit.accel.step_rehash import (
        StepRehashConfig,
        apply_step_rehash,
        calibrate_step_rehash,
        deep_part,
        remove_step_rehash,
        step_rehash_stats,
        uniform_key_steps,
    )
    from reelkit.generation import GenerationSettings

    torch.manual_seed(0)
    pipe, judge = _load()
    pipe.to(ctx.device)
    judge.to(ctx.device)
    count, steps = NUM_PROMPTS[ctx.quick], STEPS[ctx.quick]
    prompts, calibration_prompts = heldout_prompts(count, CALIBRATION_PROMPTS[ctx.quick])
    budgets = [k for k in BUDGETS[ctx.quick] if k <= steps]
    base = StepRehashConfig(**REHASH)
    ctx.settings.update({"prompts": count, "steps": steps, "guidance": GUIDANCE, "frames": FRAMES, "size": SIZE,
                         "budgets": budgets, "evaluation_prompts": prompts, "calibration_prompts": calibration_prompts,
                         "deep_blocks": deep_part(pipe.transformer, base),
                         "rehash_settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in REHASH.items()},
                         "target_psnr": TARGET_PSNR, "target_speedup": TARGET_SPEEDUP})

    def generate_all(label: str) -> list[torch.Tensor]:
        advance = ctx.progress(label, count)
        videos = []
        for index, prompt in enumerate(prompts):
            videos.append(_clip(pipe, prompt, index, steps)[0])
            advance()
        return videos

    def adherence(videos):
        seen, _ = judge_clips(judge, torch.stack(videos).to(ctx.device))
        scores = mean_adherence(prompt_adherence(p, s) for p, s in zip(prompts, seen, strict=True))
        return {f"adherence_{key}": value for key, value in scores.items()}

    references = generate_all(f"full: {count} clips")
    plain = copy.deepcopy(pipe)  # never hooked: the other half of every timing pair
    rows = [{"method": "full", "full_steps": steps, **_paired_timing(plain, pipe, prompts, steps, ctx.repeats),
             "flops": _flops(pipe, prompts[0], steps), **_quality(references, references), **adherence(references)}]

    ctx.progress("calibrating the key-step search", 1)
    settings = GenerationSettings(steps=steps, guidance=GUIDANCE, frames=FRAMES, size=SIZE, seed=10_000)
    calibration = calibrate_step_rehash(pipe, calibration_prompts, budgets[0], settings, base, evaluate=False)
    ctx.settings["calibration_gram_diagonal"] = [round(float(v), 4) for v in calibration.schedule.gram.diagonal()]

    for budget in budgets:
        schedules = {"step_rehash": calibration.schedule.key_steps_for(budget, steps, base.compute_last, base.metric,
                                                                       base.search),
                     "uniform_reuse": uniform_key_steps(steps, budget)}
        if budget in GREEDY_BUDGETS[ctx.quick]:
            schedules["step_rehash_greedy"] = calibration.schedule.key_steps_for(budget, steps, base.compute_last,
                                                                                 "cosine", "greedy")
        for method, keys in schedules.items():
            apply_step_rehash(pipe.transformer, StepRehashConfig(**{**REHASH, "key_steps": keys}))
            try:
                videos = generate_all(f"{method} ({budget} full steps)")
                full_steps = len(step_rehash_stats(pipe.transformer)["cond"].full_steps)
                figures = {"full_steps": full_steps, **_paired_timing(plain, pipe, prompts, steps, ctx.repeats),
                           "flops": _flops(pipe, prompts[0], steps), **_quality(videos, references)}
            finally:
                remove_step_rehash(pipe.transformer)
            rows.append({"method": f"{method}_{budget}", **figures, **adherence(videos), "key_steps": keys})
    ctx.settings["targets"] = targets(rows)
    return rows


__all__ = ["run", "targets"]
