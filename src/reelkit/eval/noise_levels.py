"""Where does generation decide each attribute? Adherence when sampling starts from a real clip at noise ``s``.

SDEdit (Meng et al., 2022) run as a probe: each held-out clip is encoded, and the pipeline's own sampler follows
that clip's noising path ``(1 - s) x_0 + s eps`` down to ``s`` before denoising on its own to the end. The judge
reads the results against the clips' captions. At ``s = 1`` this is plain generation; at small ``s`` the clip
itself is nearly given. An attribute that a model keeps from ``s = 0.3`` but loses from ``s = 0.5`` is decided
between the two, and a model that loses what it was given at low noise cannot draw that attribute at all
(the bundled teacher keeps shapes 0.84 from 0.3 and 0.45 from 0.5; colours stay near 1 to ``s = 0.7``).

The clip is put back on its path in ``callback_on_step_end``, so guidance, the scheduler and any accelerator
on the pipeline run exactly as in generation (the steps above ``s`` still cost their model calls).

>>> import torch
>>> from reelkit.eval.noise_levels import adherence_from_noise
>>> from reelkit.models.judge import WorldJudge
>>> from reelkit.pipelines.text_to_video import tiny_pipeline
>>> readings = adherence_from_noise(tiny_pipeline(), WorldJudge(channels=(8, 8, 8, 16), feature_dim=8).eval(),
...                                 levels=(0.5, 1.0), clips=2, steps=4, frames=5, size=32)
>>> sorted(readings), sorted(readings[0.5])
([0.5, 1.0], ['color', 'count', 'motion', 'shape'])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from reelkit.errors import ReelkitError


def _on_path(x0: torch.Tensor, noise: torch.Tensor, level: float):
    """A step-end callback holding the latents on ``x0``'s noising path while the next noise level is >= ``level``."""
    def callback(pipe, index: int, timestep, tensors: dict) -> dict:
        sigma = float(pipe.scheduler.sigmas[index + 1])
        if sigma >= level - 1e-6:
            return {"latents": ((1 - sigma) * x0 + sigma * noise).to(tensors["latents"].dtype)}
        return {}
    return callback


@torch.no_grad()
def adherence_from_noise(pipe, judge, levels: Sequence[float] = (0.3, 0.5, 0.7, 0.9, 1.0), clips: int = 32,
                         steps: int = 25, guidance: float = 5.0, frames: int = 17, size: int = 64, batch: int = 8,
                         advance: Callable[[], None] | None = None) -> dict[float, dict[str, float]]:
    """Per level ``s`` in (0, 1]: mean adherence (shape, colour, motion, count) of ``clips`` held-out clips
    regenerated from noise ``s`` by ``pipe`` with ``steps`` steps and ``guidance``, read by ``judge``."""
    from reelkit.data.datasets import heldout_seeds
    from reelkit.data.world import render_clip
    from reelkit.eval.adherence import judge_clips, mean_adherence, prompt_adherence

    if not levels or any(not 0 < level <= 1 for level in levels):
        raise ReelkitError(f"noise levels must lie in (0, 1], got {list(levels)}")
    if getattr(pipe, "consistency_sampling", False):
        raise ReelkitError("adherence_from_noise follows the Euler sampler's path; a consistency student re-noises")
    seeds = heldout_seeds(clips)
    seen = {level: [] for level in levels}
    captions = []
    for start in range(0, len(seeds), batch):  # each batch rendered and encoded once, for every level
        rendered = [render_clip(seed, frames, size) for seed in seeds[start:start + batch]]
        video = torch.stack([clip.video for clip in rendered]).to(pipe.vae.device, pipe.vae.dtype)
        x0 = pipe.vae.encode(video).latent_dist.mean.float() * pipe.vae.config.scaling_factor
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(start)).to(x0.device)
        prompts = [clip.caption for clip in rendered]
        captions += prompts
        for level in levels:
            out = pipe(prompts, num_frames=frames, height=size, width=size, num_inference_steps=steps,
                       guidance_scale=guidance, latents=noise.to(pipe.transformer.dtype),
                       callback_on_step_end=_on_path(x0, noise, level) if level < 1 else None)
            seen[level] += judge_clips(judge, out.frames.float())[0]
            if advance is not None:
                advance()
    readings = {level: mean_adherence(prompt_adherence(c, s) for c, s in zip(captions, seen[level], strict=True))
                for level in levels}
    return readings


__all__ = ["adherence_from_noise"]
