"""Paired adherence of text-to-video pipelines, with the noise of the reading beside every figure.

An adherence figure from a few dozen prompts moves by several points between prompt sets and seeds (on 32
held-out prompts, shape by about 0.07), as much as the effects a training pilot is looking for. So models are
compared *paired*: every model draws the same held-out prompts with the same seeds, the judge reads each clip,
and each figure comes with a 95% bootstrap interval over prompts; each model after the first also gets the
paired difference to the first, whose interval excludes zero only when the difference is above the noise.

>>> import torch
>>> from reelkit.eval.compare import bootstrap_interval, paired_difference
>>> a = [{"shape": 1.0}, {"shape": 0.0}, {"shape": 1.0}, {"shape": 1.0}]
>>> low, high = bootstrap_interval([s["shape"] for s in a])
>>> 0.0 <= low <= 0.75 <= high <= 1.0
True
>>> paired_difference(a, a)["shape"]   # (mean, low, high) of b - a
(0.0, 0.0, 0.0)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from reelkit.eval.adherence import judge_clips, prompt_adherence

ATTRIBUTES = ("shape", "color", "motion", "count")


def bootstrap_interval(values: Sequence[float], confidence: float = 0.95, resamples: int = 2000,
                       seed: int = 0) -> tuple[float, float]:
    """The percentile bootstrap interval of the mean of ``values`` (NaNs, attributes a prompt left open, dropped)."""
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (resamples, len(values)))].mean(1)
    tail = (1 - confidence) / 2 * 100
    return float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def paired_difference(first: Sequence[dict], second: Sequence[dict], **options
                      ) -> dict[str, tuple[float, float, float]]:
    """Per attribute, ``(mean, low, high)`` of ``second - first`` over the prompts both scored (an attribute a
    prompt leaves open, NaN or absent, is skipped)."""
    result = {}
    for name in ATTRIBUTES:
        diffs = np.asarray([b.get(name, np.nan) - a.get(name, np.nan) for a, b in zip(first, second, strict=True)],
                           dtype=float)
        diffs = diffs[~np.isnan(diffs)]
        mean = float(diffs.mean()) if len(diffs) else float("nan")
        result[name] = (mean, *bootstrap_interval(diffs, **options))
    return result


@torch.no_grad()
def adherence_per_prompt(pipe, judge, prompts: Sequence[str], seed: int = 1000, steps: int = 25,
                         guidance: float | None = 5.0, frames: int = 17, size: int = 64, batch_size: int = 32,
                         advance: Callable[[], None] | None = None) -> list[dict[str, float]]:
    """Generate each prompt (``prompts[i]`` with seed ``seed + i``), let ``judge`` read the clip, and return the
    per-prompt adherence dicts (NaN where the prompt leaves an attribute open). ``guidance`` None: the pipeline's
    default (a guidance-distilled student's). ``advance`` is called once per prompt done."""
    pipe.set_progress_bar_config(disable=True)
    scores = []
    for start in range(0, len(prompts), batch_size):
        batch = list(prompts[start:start + batch_size])
        generators = [torch.Generator().manual_seed(seed + start + i) for i in range(len(batch))]
        options = {} if guidance is None else {"guidance_scale": guidance}
        videos = pipe(batch, num_frames=frames, height=size, width=size, num_inference_steps=steps,
                      generator=generators, **options).frames
        seen, _ = judge_clips(judge, videos.float().cpu())
        scores += [prompt_adherence(p, s) for p, s in zip(batch, seen, strict=True)]
        for _ in batch if advance is not None else ():
            advance()
    return scores


def parse_model_spec(spec: str, default_steps: int) -> tuple[str, int]:
    """``MODEL`` or ``MODEL@STEPS`` (``teacher@50``, ``runs/x/model@25``) to ``(model, steps)``."""
    from reelkit.errors import ReelkitError

    model, at, steps = spec.rpartition("@") if "@" in spec else (spec, "", "")
    if not model or (at and not (steps.isdigit() and int(steps) >= 1)):
        raise ReelkitError(f"a model is MODEL or MODEL@STEPS such as teacher@50, got {spec!r}")
    return model, int(steps) if at else default_steps


def summarise(scores: Sequence[dict], reference: Sequence[dict] | None = None) -> dict:
    """``{attribute: {"mean", "low", "high"[, "diff", "diff_low", "diff_high"]}}`` for one model's scores; with
    ``reference`` (the first model's), also the paired difference to it."""
    summary = {}
    differences = paired_difference(reference, scores) if reference is not None else {}
    for name in ATTRIBUTES:
        values = np.asarray([s.get(name, np.nan) for s in scores], dtype=float)
        low, high = bootstrap_interval(values)
        mean = float(values[~np.isnan(values)].mean()) if (~np.isnan(values)).any() else float("nan")
        summary[name] = {"mean": mean, "low": low, "high": high}
        if name in differences:
            mean, low, high = differences[name]
            summary[name].update(diff=mean, diff_low=low, diff_high=high)
    return summary


__all__ = ["adherence_per_prompt", "bootstrap_interval", "paired_difference", "parse_model_spec", "summarise"]
