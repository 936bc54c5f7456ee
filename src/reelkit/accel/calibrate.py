"""Calibrate an AdaCache codebook for a model on a few prompts (the official code ships no such tool).

1. Run the uncached model on the calibration prompts (AdaCache hooked with a codebook that never reuses,
   which is bit-identical to the plain model) and record the change metric ``c_t`` (and the motion
   score) at every step: these videos are the references.
2. Propose codebooks: thresholds at quantiles of the recorded metric, scaled by a factor, with reuse
   lengths falling from ``r_max`` below the lowest threshold to 1 above the highest.
3. Order the candidates by the number of computed steps their schedule would give on the recorded
   trajectories (a cheap simulation), then bisect that order with real cached generations: the result is
   the candidate with the fewest computed steps, among those measured, whose mean PSNR against the
   references meets the target.

>>> from reelkit.accel.calibrate import calibrate_ada_cache
>>> from reelkit.generation import GenerationSettings
>>> from reelkit.pipelines.text_to_video import tiny_pipeline
>>> result = calibrate_ada_cache(tiny_pipeline(), ["a red circle"], target_psnr=25.0,
...                              settings=GenerationSettings(steps=8, frames=5, size=32))
>>> result.psnr_db >= 25.0 or not result.met_target
True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import torch

from reelkit.accel.adacache import (
    AdaCacheConfig,
    AdaCacheError,
    Codebook,
    ada_cache_stats,
    apply_ada_cache,
    record_metric_trace,
    remove_ada_cache,
)
from reelkit.generation import GenerationSettings
from reelkit.metrics import video_psnr

QUANTILES = (0.2, 0.4, 0.6, 0.8)
THRESHOLD_SCALES = (0.5, 0.75, 1.0, 1.5, 2.0, 3.0)
MAX_RATES = (2, 3, 4, 5, 6, 8, 10, 12)
NEVER_REUSE = Codebook((math.inf,), (1,))  # compute every step: bit-identical to the plain model


@dataclass
class Trajectory:
    """The metric (and motion score) of one uncached generation, by step."""

    metric: dict[int, float]
    motion: dict[int, float] = field(default_factory=dict)


@dataclass
class CalibrationResult:
    """The chosen codebook, its measured quality and cost, and every candidate evaluated."""

    codebook: Codebook
    psnr_db: float
    computed_fraction: float
    met_target: bool
    moreg_centre: float | None
    evaluated: list[dict]

    def save(self, path, **metadata) -> None:
        self.codebook.save(path, psnr_db=round(self.psnr_db, 3), computed_fraction=round(self.computed_fraction, 4),
                           met_target=self.met_target, moreg_centre=self.moreg_centre, evaluated=self.evaluated,
                           **metadata)


def _generate(pipe, prompt: str, settings: GenerationSettings, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return pipe(prompt, negative_prompt=settings.negative_prompt, num_frames=settings.frames, height=settings.size,
                width=settings.size, num_inference_steps=settings.steps, guidance_scale=settings.guidance,
                generator=generator).frames[0].cpu()


def reference_run(pipe, prompts: Sequence[str], settings: GenerationSettings, base: AdaCacheConfig
                  ) -> tuple[list[torch.Tensor], list[Trajectory]]:
    """Uncached videos of ``prompts`` and their metric trajectories."""
    videos, trajectories = [], []
    apply_ada_cache(pipe.transformer, replace(base, codebook=NEVER_REUSE, moreg=False, per_sample=False))
    try:
        trace = record_metric_trace(pipe.transformer)
        for index, prompt in enumerate(prompts):
            trace.clear()
            videos.append(_generate(pipe, prompt, settings, settings.seed + index))
            trajectories.append(Trajectory({e["step"]: e["metric"][0] for e in trace},
                                           {e["step"]: e["motion"][0] for e in trace if e["motion"] is not None}))
    finally:
        remove_ada_cache(pipe.transformer)
    return videos, trajectories


def simulate_schedule(codebook: Codebook, trajectory: Trajectory, num_steps: int, compute_first: int = 2,
                      compute_last: int = 2) -> list[int]:
    """The steps a codebook would compute, assuming the metric between two compute steps is the mean of
    the per-step metric recorded on the uncached run."""
    computed, rate, next_compute = [], 1, 0
    for step in range(num_steps):
        if step < compute_first or step >= num_steps - compute_last or step >= next_compute:
            if computed:
                span = [trajectory.metric.get(s) for s in range(computed[-1], step)]
                span = [v for v in span if v is not None]
                if span:
                    rate = int(codebook.rates_for(torch.tensor([sum(span) / len(span)]))[0])
            computed.append(step)
            next_compute = step + rate
    return computed


def candidate_codebooks(trajectories: Sequence[Trajectory], num_steps: int, compute_first: int = 2,
                        compute_last: int = 2) -> list[Codebook]:
    """Quantile-placed codebooks over a grid of threshold scales and longest reuse lengths."""
    values = torch.tensor([v for t in trajectories for s, v in t.metric.items()
                           if compute_first <= s < num_steps - compute_last])
    if values.numel() == 0:
        raise AdaCacheError("calibration recorded no metric values: use more steps")
    base = sorted({q for q in torch.quantile(values, torch.tensor(QUANTILES)).tolist() if q > 0}) or [1e-6]
    books = []
    for scale in THRESHOLD_SCALES:
        thresholds = [b * scale for b in base]
        for r_max in MAX_RATES:
            if r_max >= num_steps:
                continue
            rates = [max(1, round(r_max - (r_max - 1) * i / len(thresholds))) for i in range(len(thresholds))]
            # the last rate also applies above the last threshold: compute every step there
            books.append(Codebook(tuple(thresholds) + (2 * thresholds[-1],), tuple(rates) + (1,)))
    return books


def calibrate_ada_cache(pipe, prompts: Sequence[str], target_psnr: float = 30.0,
                        settings: GenerationSettings | None = None, base: AdaCacheConfig | None = None,
                        progress: Callable[[str], None] | None = None,
                        references: Sequence[torch.Tensor] | None = None) -> CalibrationResult:
    """The fastest codebook whose cached videos of ``prompts`` reach ``target_psnr`` (mean, dB) against the
    uncached ones. ``base`` carries the other AdaCache settings (monitor, MoReg, ...); with MoReg on, its
    centre is re-set to the median motion score recorded on the uncached run.

    ``references`` (one ``(C, T, H, W)`` clip a prompt, same seeds) replaces the uncached videos as the target to
    match: e.g. the model at more steps, so that fewer steps and the cache share one quality budget (what
    ``reelkit tune`` does). The metric trajectories still come from the uncached run at ``settings.steps``."""
    settings = settings or GenerationSettings()
    base = base or AdaCacheConfig()
    say = progress or (lambda message: None)
    if not prompts:
        raise AdaCacheError("calibration needs at least one prompt")
    say(f"uncached reference run on {len(prompts)} prompt(s)")
    uncached, trajectories = reference_run(pipe, prompts, settings, base)
    if references is None:
        references = uncached
    elif len(references) != len(prompts):
        raise AdaCacheError(f"calibration got {len(references)} reference clips for {len(prompts)} prompts")
    moreg_centre = None
    if base.moreg:
        motions = [v for t in trajectories for v in t.motion.values()]
        if motions:
            moreg_centre = float(torch.tensor(motions).median())
            base = replace(base, moreg_centre=moreg_centre)
    n = settings.steps
    candidates = candidate_codebooks(trajectories, n, base.compute_first, base.compute_last)

    def cost(book: Codebook) -> float:
        return sum(len(simulate_schedule(book, t, n, base.compute_first, base.compute_last)) for t in trajectories)

    ranked = sorted({(cost(b), b.thresholds, b.rates): b for b in candidates}.items())
    ordered = [book for _, book in ranked]  # fastest first
    evaluated: dict[int, dict] = {}

    def evaluate(index: int) -> dict:
        if index not in evaluated:
            book = ordered[index]
            apply_ada_cache(pipe.transformer, replace(base, codebook=book))
            psnrs, computed = [], 0
            try:
                for i, (prompt, reference) in enumerate(zip(prompts, references, strict=True)):
                    psnrs.append(video_psnr(_generate(pipe, prompt, settings, settings.seed + i), reference))
                    computed += max(max(s.computed) for s in ada_cache_stats(pipe.transformer).values())
            finally:
                remove_ada_cache(pipe.transformer)
            psnr = sum(psnrs) / len(psnrs)
            evaluated[index] = {"thresholds": list(book.thresholds), "rates": list(book.rates), "psnr_db": psnr,
                                "computed_fraction": computed / (n * len(prompts))}
            say(f"candidate {index + 1}/{len(ordered)}: {psnr:.2f} dB, "
                f"{computed / len(prompts):.1f}/{n} steps computed")
        return evaluated[index]

    low, high = 0, len(ordered) - 1  # invariant: candidates after `high` are assumed to meet the target
    best = None
    while low <= high:
        middle = (low + high) // 2
        if evaluate(middle)["psnr_db"] >= target_psnr:
            best, high = middle, middle - 1
        else:
            low = middle + 1
    met = best is not None
    if best is None:  # nothing met the target: the slowest candidate is the closest
        best = len(ordered) - 1
        evaluate(best)
    else:  # the simulation only orders candidates roughly: of those measured to meet the target, the fastest
        best = min((i for i, e in evaluated.items() if e["psnr_db"] >= target_psnr),
                   key=lambda i: (evaluated[i]["computed_fraction"], -evaluated[i]["psnr_db"]))
    chosen = evaluated[best]
    return CalibrationResult(ordered[best], chosen["psnr_db"], chosen["computed_fraction"], met, moreg_centre,
                             [evaluated[i] for i in sorted(evaluated)])


__all__ = ["CalibrationResult", "Trajectory", "calibrate_ada_cache", "candidate_codebooks", "reference_run",
           "simulate_schedule"]
