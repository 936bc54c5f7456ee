"""Does a text-to-video model read a word? Swap it in the prompt and see whether the prediction follows.

Real clips of single-object held-out scenes are encoded and noised to a level ``s``; the model predicts the clean
latents from them once with the true caption and once with the object's shape word swapped for another; the
judge reads both decoded predictions. ``follow`` is the share of swapped predictions that show the new shape,
``keep`` the share that still show the old one. A model that reads shape words has ``follow`` near the
``true``-caption reading at high noise; one that ignores them has ``follow`` at chance and ``keep`` equal to
``true`` (the two predictions are the same clip). It costs two model calls a clip a level, so it tracks a
training run far faster than full generations.

>>> from reelkit.eval.text_control import shape_word_control
>>> from reelkit.models.judge import WorldJudge
>>> from reelkit.pipelines.text_to_video import tiny_pipeline
>>> readings = shape_word_control(tiny_pipeline(), WorldJudge(channels=(8, 8, 8, 16), feature_dim=8).eval(),
...                               clips=2, levels=(0.7,), size=32, frames=5)
>>> sorted(readings[0.7])
['follow', 'keep', 'true']
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch


def _shape_seen(reading) -> str | None:
    return reading[0]["shape"] if reading else None


@torch.no_grad()
def shape_word_control(pipe, judge, clips: int = 24, levels: Sequence[float] = (0.5, 0.7, 0.9), size: int = 64,
                       frames: int = 17, seed: int = 0) -> dict[float, dict[str, float]]:
    """Per noise level: ``true`` (prediction shows the caption's shape), ``follow`` and ``keep`` (see the module)."""
    from reelkit.data.captions import SHAPES
    from reelkit.data.datasets import heldout_seeds
    from reelkit.data.world import random_scene, render_clip
    from reelkit.eval.adherence import judge_clips
    from reelkit.models.text import encode_prompts

    seeds = [s for s in heldout_seeds(8 * clips) if len(random_scene(s)[0].objects) == 1][:clips]
    scenes = [random_scene(s) for s in seeds]
    video = torch.stack([render_clip(seed=s, num_frames=frames, size=size).video for s in seeds])
    latents = pipe.vae.encode(video.to(pipe.vae.dtype)).latent_dist.mean.float() * pipe.vae.config.scaling_factor
    rng = random.Random(seed)
    old = [scene.objects[0].shape for scene, _ in scenes]
    new = [rng.choice([s for s in SHAPES if s != shape]) for shape in old]
    prompts = {"true": [caption for _, caption in scenes],
               "swapped": [caption.replace(a, b) for (_, caption), a, b in zip(scenes, old, new, strict=True)]}
    generator = torch.Generator().manual_seed(seed)
    readings = {}
    for level in levels:
        noisy = (1 - level) * latents + level * torch.randn(latents.shape, generator=generator)
        timestep = torch.full((len(seeds),), level * 1000.0)
        seen = {}
        for name, texts in prompts.items():
            text = encode_prompts(texts, pipe.tokenizer, pipe.text_encoder).to(noisy.dtype)
            predicted = noisy - level * pipe.transformer(noisy, timestep, text).sample  # x0 = x_t - s v
            shapes, _ = judge_clips(judge, pipe.decode_latents(predicted).float())
            seen[name] = [_shape_seen(r) for r in shapes]
        n = len(seeds)
        readings[level] = {"true": sum(s == a for s, a in zip(seen["true"], old, strict=True)) / n,
                           "follow": sum(s == b for s, b in zip(seen["swapped"], new, strict=True)) / n,
                           "keep": sum(s == a for s, a in zip(seen["swapped"], old, strict=True)) / n}
    return readings


__all__ = ["shape_word_control"]
