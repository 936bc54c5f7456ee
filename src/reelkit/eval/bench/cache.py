"""Bench suite ``cache``: training-free caching on the teacher, AdaCache against its peers, in one process.

Every method generates the same held-out prompts with the same seeds (``STEPS`` steps, guidance
``GUIDANCE``, one clip at a time so adaptive schedules adapt per video). Rows:

* ``uncached``; ``adacache_slow`` / ``adacache_fast`` (the official 30-step books rescaled),
  ``adacache_fast_moreg``, ``adacache_calibrated`` (``reelkit calibrate adacache`` on separate prompts);
* peers, diffusers' own implementations: ``pab``, ``fastercache``, ``firstblockcache``, ``magcache``
  (ratios calibrated on the first calibration prompt), ``taylorseer``; and ``cache_dit`` (PyPI
  ``cache-dit``'s DBCache through its ``BlockAdapter`` for custom models). A peer that fails is a row with
  its ``error``.

Figures: ``latency_s`` (median wall clock of one clip, prompt to pixels, over ``repeats`` rounds),
``speedup`` (median over those rounds of the uncached clip's time over the cached one's, the two run back
to back on the same prompt), ``denoise_speedup`` (the same for the denoising loop alone, without text
encoding and VAE decoding), ``computed_steps`` (mean denoising steps whose last block ran in full), ``flops`` (one clip,
``FlopCounterMode``), ``psnr_db`` / ``ssim`` against the uncached clip (mean over prompts),
``psnr_db_high_motion`` (over the half of the prompts with the most motion, measured by AdaCache's motion
score on the uncached run) and judge adherence. Each method is also swept over its main knob; the
sweep is in ``settings["sweeps"]``, ``settings["speedup_at_target_psnr"]`` holds each method's best
speedup at ``TARGET_PSNR`` or more (read off its curve), ``settings["moreg_vs_plain_high_motion_psnr"]``
compares MoReg with plain AdaCache on the high-motion prompts at equal speedup, and a PNG of PSNR
against speedup is saved next to the JSON.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from reelkit.eval.adherence import judge_clips, mean_adherence, prompt_adherence
from reelkit.eval.bench import BenchContext
from reelkit.eval.bench.harness import heldout_prompts, load_generator_and_judge
from reelkit.metrics import video_psnr, video_ssim

NUM_PROMPTS = {False: 12, True: 2}
CALIBRATION_PROMPTS = {False: 4, True: 1}
STEPS = {False: 50, True: 8}
GUIDANCE = 5.0
FRAMES, SIZE = 17, 64
TARGET_PSNR = 30.0
PIPELINE = None  # a loader returning the pipeline to bench (tests swap in a tiny one); None: bundled teacher
JUDGE = None


@dataclass
class Method:
    """A cache to bench: ``apply(pipe, knob)`` hooks it in, ``remove(pipe)`` takes it out."""

    name: str
    apply: Callable
    remove: Callable
    knob: object = None
    sweep: tuple = ()
    knob_name: str = ""


def _adacache(codebook, moreg=False):
    from reelkit.accel.adacache import AdaCacheConfig, apply_ada_cache, preset_codebook, remove_ada_cache

    def apply(pipe, scale, state):
        book = codebook(state) if callable(codebook) else preset_codebook(codebook, state["steps"])
        config = AdaCacheConfig(codebook=book.scaled(scale), moreg=moreg, **state.get("moreg_settings", {}))
        apply_ada_cache(pipe.transformer, config)

    return apply, lambda pipe: remove_ada_cache(pipe.transformer)


def _diffusers(make_config):
    def apply(pipe, knob, state):
        pipe.transformer.enable_cache(make_config(pipe, knob, state))

    return apply, lambda pipe: pipe.transformer.disable_cache()


def _pab(pipe, skip, state):
    from diffusers.hooks import PyramidAttentionBroadcastConfig

    # PAB's ranges: spatial attention the shortest, temporal longer, cross-attention the longest
    return PyramidAttentionBroadcastConfig(
        spatial_attention_block_skip_range=skip, temporal_attention_block_skip_range=skip + 1,
        cross_attention_block_skip_range=skip + 2, spatial_attention_timestep_skip_range=(100, 800),
        temporal_attention_timestep_skip_range=(100, 800), cross_attention_timestep_skip_range=(100, 800),
        temporal_attention_block_identifiers=("transformer_blocks.*attn_temporal",),
        current_timestep_callback=lambda: pipe.current_timestep)


def _fastercache(pipe, skip, state):
    from diffusers.hooks import FasterCacheConfig

    return FasterCacheConfig(spatial_attention_block_skip_range=skip, spatial_attention_timestep_skip_range=(-1, 681),
                             current_timestep_callback=lambda: pipe.current_timestep,
                             attention_weight_callback=lambda _: 0.5, tensor_format="BCFHW",
                             # the teacher's pipeline runs the guidance branches as separate calls, while
                             # FasterCache's unconditional-branch reuse expects them batched: attention reuse only
                             is_guidance_distilled=True)


def _firstblockcache(pipe, threshold, state):
    from diffusers.hooks import FirstBlockCacheConfig

    return FirstBlockCacheConfig(threshold=threshold)


def _magcache(pipe, knob, state):
    from diffusers.hooks import MagCacheConfig

    # the default caps skips at 3 in a row, which caps its speedup here; the sweep lifts the cap with the threshold
    threshold, max_skip_steps = knob
    return MagCacheConfig(threshold=threshold, max_skip_steps=max_skip_steps, num_inference_steps=state["steps"],
                          mag_ratios=state["mag_ratios"])


def _taylorseer(pipe, interval, state):
    from diffusers.hooks import TaylorSeerCacheConfig

    # diffusers' default patterns full-match names ending in "attn"; the teacher's branches are attn1,
    # attn_temporal, attn2 and ff, so they are named here (TaylorSeer forecasts each branch's output)
    return TaylorSeerCacheConfig(cache_interval=interval, disable_cache_before_step=3, max_order=1,
                                 taylor_factors_dtype=torch.float32,
                                 cache_identifiers=[r"transformer_blocks\.\d+\.(attn1|attn_temporal|attn2|ff)"])


def _cache_dit_apply(pipe, threshold, state):
    import cache_dit
    from cache_dit import BlockAdapter, DBCacheConfig, ForwardPattern

    for name in logging.root.manager.loggerDict:  # cache-dit reports every generation at INFO
        if "cache_dit" in name.lower() or "cache-dit" in name.lower():
            logging.getLogger(name).setLevel(logging.WARNING)
    adapter = BlockAdapter(transformer=pipe.transformer, blocks=pipe.transformer.transformer_blocks,
                           forward_pattern=ForwardPattern.Pattern_2, has_separate_cfg=True)
    cache_dit.enable_cache(adapter, cache_config=DBCacheConfig(
        num_inference_steps=state["steps"], residual_diff_threshold=threshold, Fn_compute_blocks=1,
        Bn_compute_blocks=0, max_warmup_steps=4))


def _cache_dit_remove(pipe):
    import cache_dit

    cache_dit.disable_cache(pipe.transformer)


def methods(quick: bool) -> list[Method]:
    """Every benched method with its default knob and sweep (a single sweep value when ``quick``)."""
    def sweep(values):
        return values[:1] if quick else values

    scales = sweep((0.25, 0.5, 0.75, 1.25, 1.5, 2.0))
    rows = [
        Method("adacache_slow", *_adacache("slow"), 1.0, (), "rate scale"),
        Method("adacache_fast", *_adacache("fast"), 1.0, scales, "rate scale"),
        Method("adacache_fast_moreg", *_adacache("fast", moreg=True), 1.0, scales, "rate scale"),
        Method("adacache_calibrated", *_adacache(lambda state: state["calibrated"]), 1.0, sweep((0.5, 0.75, 1.25, 1.5)),
               "rate scale"),
        Method("pab", *_diffusers(_pab), 2, sweep((3, 4, 6)), "block skip range"),
        Method("fastercache", *_diffusers(_fastercache), 2, sweep((3, 4)), "block skip range"),
        Method("firstblockcache", *_diffusers(_firstblockcache), 0.05, sweep((0.02, 0.1, 0.2, 0.3, 0.5)),
               "threshold"),
        Method("magcache", *_diffusers(_magcache), (0.06, 3), sweep(((0.02, 2), (0.12, 4), (0.24, 6), (0.5, 10))),
               "threshold, max skipped steps"),
        Method("taylorseer", *_diffusers(_taylorseer), 3, sweep((2, 5, 8)), "cache interval"),
        Method("cache_dit", _cache_dit_apply, _cache_dit_remove, 0.08, sweep((0.04, 0.16, 0.3, 0.5)), "threshold"),
    ]
    return rows


def _load():
    return load_generator_and_judge(PIPELINE, JUDGE)


class _Clock:
    """Times whole clips and, through a transformer pre/post hook pair, the denoising loop alone."""

    def __init__(self, pipe):
        self.pipe, self.denoise = pipe, 0.0
        self._start = None

    def clip(self, prompt: str, seed: int, steps: int) -> tuple[torch.Tensor, float, float]:
        self.denoise = 0.0

        def on_step(pipeline, step, timestep, tensors):
            now = time.perf_counter()
            self.denoise += now - self._start
            self._start = now
            return tensors

        generator = torch.Generator().manual_seed(seed)
        started = time.perf_counter()
        self._start = started  # text encoding is counted in the first step; it is a fraction of a millisecond
        video = self.pipe(prompt, num_frames=FRAMES, height=SIZE, width=SIZE, num_inference_steps=steps,
                          guidance_scale=GUIDANCE, generator=generator, callback_on_step_end=on_step).frames[0]
        return video.cpu(), time.perf_counter() - started, self.denoise


def _full_steps_counter(pipe) -> tuple[list[int], Callable[[], None]]:
    """Counts calls of the last block's last MLP layer: a step whose last block was skipped, reused or
    forecast (TaylorSeer replaces the MLP's forward) does not count."""
    last = [m for m in pipe.transformer.transformer_blocks[-1].ff.modules() if isinstance(m, torch.nn.Linear)][-1]
    count = [0]
    handle = last.register_forward_pre_hook(lambda module, args: count.__setitem__(0, count[0] + 1))
    return count, handle.remove


def _flops(pipe, prompt: str, steps: int) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        pipe(prompt, num_frames=FRAMES, height=SIZE, width=SIZE, num_inference_steps=steps, guidance_scale=GUIDANCE,
             generator=torch.Generator().manual_seed(0))
    return int(counter.get_total_flops())


def _mag_ratios(pipe, prompt: str, steps: int) -> list[float]:
    """diffusers' MagCache calibration mode prints the ratios at the end of a run; read them from there."""
    from diffusers.hooks import MagCacheConfig

    pipe.transformer.enable_cache(MagCacheConfig(calibrate=True, num_inference_steps=steps))
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            pipe(prompt, num_frames=FRAMES, height=SIZE, width=SIZE, num_inference_steps=steps,
                 guidance_scale=GUIDANCE, generator=torch.Generator().manual_seed(0))
    finally:
        pipe.transformer.disable_cache()
    lines = [line for line in printed.getvalue().splitlines() if line.startswith("[") and "MagCache" not in line]
    return [float(v) for v in lines[0].strip("[]").split(",")]


def _generate_all(pipe, prompts, steps, advance) -> dict:
    clock = _Clock(pipe)
    count, release = _full_steps_counter(pipe)
    videos, full_steps = [], []
    try:
        for index, prompt in enumerate(prompts):
            count[0] = 0
            videos.append(clock.clip(prompt, index, steps)[0])
            full_steps.append(count[0] / (2 if GUIDANCE > 1 else 1))
            advance()
    finally:
        release()
    return {"videos": videos, "computed_steps": sum(full_steps) / len(full_steps)}


def _paired_timing(plain, pipe, prompts, steps, rounds: int) -> dict:
    """Latency and speedup from rounds of one uncached and one cached clip back to back, on prompt ``r``
    of round ``r``: pairing cancels the slow swings of a shared machine's speed (this one's clips vary
    by 25% from minute to minute), and rotating prompts lets adaptive schedules show their spread."""
    plain_clock, clock = _Clock(plain), _Clock(pipe)
    latencies, ratios, denoise_ratios = [], [], []
    for r in range(rounds):
        prompt = prompts[r % len(prompts)]
        _, plain_seconds, plain_denoise = plain_clock.clip(prompt, r, steps)
        _, seconds, denoise = clock.clip(prompt, r, steps)
        latencies.append(seconds)
        ratios.append(plain_seconds / seconds)
        denoise_ratios.append(plain_denoise / max(denoise, 1e-9))
    return {"latency_s": statistics.median(latencies), "speedup": statistics.median(ratios),
            "denoise_speedup": statistics.median(denoise_ratios)}


MAX_PSNR = 100.0  # identical clips have infinite PSNR; JSON has no infinity


def _quality(videos, references, high_motion) -> dict:
    psnr = [min(video_psnr(v, r), MAX_PSNR) for v, r in zip(videos, references, strict=True)]
    ssim = [video_ssim(v, r) for v, r in zip(videos, references, strict=True)]
    return {"psnr_db": sum(psnr) / len(psnr), "ssim": sum(ssim) / len(ssim),
            "psnr_db_high_motion": sum(psnr[i] for i in high_motion) / len(high_motion)}


def _plot(sweeps: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for name, points in sweeps.items():
        points = sorted((p for p in points if "error" not in p), key=lambda p: p["speedup"])
        if points:
            style = "-o" if name.startswith("adacache") else "--s"
            axis.plot([p["speedup"] for p in points], [p["psnr_db"] for p in points], style, label=name, ms=4)
    axis.axhline(TARGET_PSNR, color="grey", lw=0.8, ls=":")
    axis.set_xlabel("speedup vs uncached (wall clock, whole clip)")
    axis.set_ylabel("PSNR vs uncached (dB)")
    axis.set_title("Caching on the reelkit teacher: quality against speed")
    axis.legend(fontsize=7, ncol=2)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _interpolate(points: list[dict], speedup: float, key: str) -> float | None:
    """``key`` of a sweep curve at ``speedup``, linear between its two nearest points; None outside it."""
    points = sorted((p for p in points if "error" not in p), key=lambda p: p["speedup"])
    for low, high in zip(points, points[1:], strict=False):
        if low["speedup"] <= speedup <= high["speedup"]:
            share = (speedup - low["speedup"]) / max(high["speedup"] - low["speedup"], 1e-9)
            return low[key] + share * (high[key] - low[key])
    return None


def compare_at_equal_speedup(sweeps: dict, method: str, baseline: str, key: str) -> list[dict]:
    """``method``'s ``key`` at each of its sweep points against ``baseline``'s curve at the same speedup."""
    rows = []
    for point in sweeps.get(method, []):
        if "error" in point:
            continue
        other = _interpolate(sweeps.get(baseline, []), point["speedup"], key)
        if other is not None:
            rows.append({"speedup": round(point["speedup"], 3), method: round(point[key], 3),
                         baseline: round(other, 3)})
    return rows


def speedup_at_psnr(points: list[dict], target: float) -> float | None:
    """The best speedup of a sweep at ``target`` dB or more, reading between points on the curve."""
    valid = sorted((p for p in points if "error" not in p), key=lambda p: p["speedup"])
    best = max((p["speedup"] for p in valid if p["psnr_db"] >= target), default=None)
    for low, high in zip(valid, valid[1:], strict=False):  # where the curve crosses the target
        if low["psnr_db"] >= target > high["psnr_db"]:
            share = (low["psnr_db"] - target) / (low["psnr_db"] - high["psnr_db"])
            crossing = low["speedup"] + share * (high["speedup"] - low["speedup"])
            best = max(best or 0.0, crossing)
    return best


def run(ctx: BenchContext) -> list[dict]:
    from reelkit.accel.adacache import AdaCacheConfig
    from reelkit.accel.calibrate import calibrate_ada_cache, reference_run
    from reelkit.generation import GenerationSettings

    torch.manual_seed(0)
    pipe, judge = _load()
    pipe.to(ctx.device)
    judge.to(ctx.device)
    count, steps = NUM_PROMPTS[ctx.quick], STEPS[ctx.quick]
    prompts, calibration_prompts = heldout_prompts(count, CALIBRATION_PROMPTS[ctx.quick])
    settings = GenerationSettings(steps=steps, guidance=GUIDANCE, frames=FRAMES, size=SIZE)
    ctx.settings.update({"prompts": count, "steps": steps, "guidance": GUIDANCE, "frames": FRAMES, "size": SIZE,
                         "calibration_prompts": calibration_prompts, "target_psnr": TARGET_PSNR})

    advance = ctx.progress("uncached: motion scores", count)
    _, trajectories = reference_run(pipe, prompts, settings, AdaCacheConfig())
    motion = [statistics.mean(t.motion.values()) if t.motion else 0.0 for t in trajectories]
    high_motion = sorted(range(count), key=lambda i: -motion[i])[:max(1, count // 2)]
    ctx.settings["motion_scores"] = [round(m, 4) for m in motion]
    ctx.settings["high_motion_prompts"] = [prompts[i] for i in high_motion]

    advance = ctx.progress(f"uncached: {count} clips", count)
    uncached = _generate_all(pipe, prompts, steps, advance)
    references = uncached["videos"]

    def adherence(videos):
        seen, _ = judge_clips(judge, torch.stack(videos).to(ctx.device))
        scores = mean_adherence(prompt_adherence(p, s) for p, s in zip(prompts, seen, strict=True))
        return {f"adherence_{key}": value for key, value in scores.items()}

    plain = copy.deepcopy(pipe)  # never hooked: the other half of every timing pair
    rows = [{"method": "uncached", **_paired_timing(plain, pipe, prompts, steps, ctx.repeats),
             "computed_steps": uncached["computed_steps"], "flops": _flops(pipe, prompts[0], steps),
             **_quality(references, references, high_motion), **adherence(references)}]

    ctx.progress("calibrating AdaCache and MagCache", 1)
    state = {"steps": steps, "mag_ratios": _mag_ratios(pipe, calibration_prompts[0], steps)}
    calibration = calibrate_ada_cache(pipe, calibration_prompts, TARGET_PSNR, settings)
    state["calibrated"] = calibration.codebook
    ctx.settings["calibrated_codebook"] = {"thresholds": list(calibration.codebook.thresholds),
                                           "rates": list(calibration.codebook.rates),
                                           "calibration_psnr_db": calibration.psnr_db}
    moreg_centre = statistics.median(v for t in trajectories for v in t.motion.values()) if trajectories[0].motion \
        else None
    # MoReg's centre is Open-Sora's typical motion (0.385); re-centre it on this model, as the spec advises
    state["moreg_settings"] = {"moreg_centre": moreg_centre} if moreg_centre else {}
    ctx.settings["moreg_centre"] = moreg_centre

    def measure(method: Method, knob) -> dict:
        advance = ctx.progress(f"{method.name} ({method.knob_name} {knob})", count)
        try:
            method.apply(pipe, knob, state)
        except Exception as error:  # a peer that cannot run on this model is a row saying why
            return {"error": f"{type(error).__name__}: {error}".splitlines()[0][:300]}
        try:
            result = _generate_all(pipe, prompts, steps, advance)
            figures = {**_paired_timing(plain, pipe, prompts, steps, ctx.repeats),
                       "computed_steps": result["computed_steps"],
                       **_quality(result["videos"], references, high_motion)}
            return figures, result["videos"]
        except Exception as error:
            return {"error": f"{type(error).__name__}: {error}".splitlines()[0][:300]}
        finally:
            with contextlib.suppress(Exception):
                method.remove(pipe)

    sweeps = {}
    for method in methods(ctx.quick):
        outcome = measure(method, method.knob)
        row = {"method": method.name, "knob": method.knob_name, "knob_value": method.knob}
        if isinstance(outcome, dict):
            rows.append({**row, **outcome})
            sweeps[method.name] = [{"knob_value": method.knob, **outcome}]
            continue
        figures, videos = outcome
        method.apply(pipe, method.knob, state)
        try:
            figures["flops"] = _flops(pipe, prompts[0], steps)
        finally:
            method.remove(pipe)
        rows.append({**row, **figures, **adherence(videos)})
        sweeps[method.name] = [{"knob_value": method.knob, **figures}]
        for knob in method.sweep:
            point = measure(method, knob)
            sweeps[method.name].append({"knob_value": knob, **(point if isinstance(point, dict) else point[0])})

    ctx.settings["sweeps"] = {name: [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in p.items()}
                                     for p in points] for name, points in sweeps.items()}
    ctx.settings["speedup_at_target_psnr"] = {name: speedup_at_psnr(points, TARGET_PSNR)
                                              for name, points in sweeps.items()}
    ctx.settings["moreg_vs_plain_high_motion_psnr"] = compare_at_equal_speedup(
        sweeps, "adacache_fast_moreg", "adacache_fast", "psnr_db_high_motion")
    path = ctx.artifact("psnr_vs_speedup.png")
    if path is not None:
        _plot(sweeps, path)
        ctx.settings["plot"] = path.name
    return rows


__all__ = ["Method", "compare_at_equal_speedup", "methods", "run", "speedup_at_psnr"]

