"""Calibrating Step Rehash: record the deep features of a few generations, search the key steps of a budget and
measure what they cost in PSNR against the full model."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from torch import nn

from reelkit.accel.step_rehash.hooks import (
    StepRehashConfig,
    apply_step_rehash,
    gram_from_trace,
    record_rehash_features,
    remove_step_rehash,
)
from reelkit.accel.step_rehash.schedule import RehashSchedule, StepRehashError, check_budget, uniform_key_steps


@dataclass
class RehashCalibration:
    """The calibration's schedule, the key steps for ``budget`` and how they fare against uniform keys."""

    schedule: RehashSchedule
    budget: int
    key_steps: list[int]
    uniform_key_steps: list[int]
    psnr_db: float | None = None
    uniform_psnr_db: float | None = None

    def save(self, path: str | Path, **metadata: Any) -> None:
        extra = {"budget": self.budget, "uniform_key_steps": self.uniform_key_steps}
        if self.psnr_db is not None:
            extra.update(psnr_db=round(self.psnr_db, 3), uniform_psnr_db=round(self.uniform_psnr_db, 3))
        self.schedule.save(path, **extra, **metadata)


def _denoiser(pipe) -> nn.Module:
    model = getattr(pipe, "transformer", None) or getattr(pipe, "unet", None)
    if model is None:
        raise StepRehashError(f"{type(pipe).__name__} has no transformer or unet to hook")
    return model


def calibrate_step_rehash(pipe, prompts: Sequence[str], budget: int, settings=None,
                          config: StepRehashConfig | None = None, evaluate: bool = True,
                          progress: Callable[[str], None] | None = None) -> RehashCalibration:
    """Record the deep-feature trajectory of full generations of ``prompts`` (every step a key step) and
    search the key steps for ``budget`` full steps. With ``evaluate``, also measure the mean PSNR of
    rehashed videos against the full ones, for the searched and for uniform key steps.

    >>> from reelkit.generation import GenerationSettings
    >>> from reelkit.pipelines.text_to_video import tiny_pipeline
    >>> result = calibrate_step_rehash(tiny_pipeline(open_gates=True), ["a red circle"], 3,
    ...                                GenerationSettings(steps=6, frames=5, size=32), evaluate=False)
    >>> len(result.key_steps), result.key_steps[0], tuple(result.schedule.gram.shape)
    (3, 0, (6, 6))
    """
    from reelkit.accel.calibrate import _generate
    from reelkit.generation import GenerationSettings
    from reelkit.metrics import video_psnr

    settings = settings or GenerationSettings()
    base = config or StepRehashConfig()
    say = progress or (lambda message: None)
    if not prompts:
        raise StepRehashError("calibration needs at least one prompt")
    n = settings.steps
    check_budget(budget, n)
    model = _denoiser(pipe)
    plain = replace(base, key_steps=None, num_full_steps=None, schedule=None, num_inference_steps=None)
    say(f"full reference run on {len(prompts)} prompt(s), recording the deep features")
    apply_step_rehash(model, plain)
    references = []
    try:
        trace = record_rehash_features(model)
        for index, prompt in enumerate(prompts):
            references.append(_generate(pipe, prompt, settings, settings.seed + index))
        gram = gram_from_trace(trace, n)
    finally:
        remove_step_rehash(model)
    shallow = list(base.shallow_blocks) if isinstance(base.shallow_blocks, tuple) else base.shallow_blocks
    schedule = RehashSchedule(n, gram, None, {"feature": base.similarity_feature, "shallow_blocks": shallow,
                                              "metric": base.metric, "search": base.search,
                                              "compute_last": base.compute_last})
    keys = schedule.key_steps_for(budget, n, base.compute_last, base.metric, base.search)
    schedule.key_steps = tuple(keys)
    result = RehashCalibration(schedule, budget, keys, uniform_key_steps(n, budget))
    if evaluate:
        scores = []
        for name, steps in (("searched", keys), ("uniform", result.uniform_key_steps)):
            apply_step_rehash(model, replace(plain, key_steps=steps))
            try:
                psnr = [video_psnr(_generate(pipe, p, settings, settings.seed + i), r)
                        for i, (p, r) in enumerate(zip(prompts, references, strict=True))]
            finally:
                remove_step_rehash(model)
            scores.append(sum(min(v, 100.0) for v in psnr) / len(psnr))
            say(f"{name} key steps: {scores[-1]:.2f} dB")
        result.psnr_db, result.uniform_psnr_db = scores
    return result


__all__ = ["RehashCalibration", "calibrate_step_rehash"]
