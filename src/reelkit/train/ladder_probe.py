"""Does a ladder model draw the shape its word names? The swapped-word probe (SDEdit, Meng et al. 2022, as a probe).

Held-out stills of rung 1 are noised to a level ``s`` and denoised by the model with a caption naming the true
shape, or a swapped one (three places along :data:`~reelkit.data.captions.SHAPES`); the judge then reads the
shape. *Drawing* is the true caption's shape kept from low noise; *binding* is the swapped word's shape shown
from high noise. A model that draws but does not bind keeps the old shape whatever the word says; the probe
moves before generated shapes do, so it is the early signal of a rung-1 run.

>>> from reelkit.train.ladder_probe import load_ladder_model, swapped_word_probe   # doctest: +SKIP
>>> denoiser, config = load_ladder_model("runs/ladder/r1_128_ow9/best")             # doctest: +SKIP
>>> swapped_word_probe(denoiser, config, levels=(0.5, 0.9))                        # doctest: +SKIP
{0.5: {'true_shown': 0.94, 'swapped_shown': 0.04, 'swapped_kept': 0.85}, 0.9: {...}}
"""

from __future__ import annotations

import torch

from reelkit.data.captions import SHAPES
from reelkit.data.ladder import RUNGS, WorldSlice, heldout_slice_seeds, render_slice
from reelkit.errors import ReelkitError
from reelkit.train.ladder import LadderDenoiser, SlotEncoder, judge_stills, load_ladder_model, sample_flow, slot_labels


@torch.no_grad()
def swapped_word_probe(denoiser: LadderDenoiser, config: dict, levels=(0.3, 0.5, 0.7, 0.9), prompts: int = 48,
                       steps: int = 20, guidance: float = 5.0, vae=None, judge=None) -> dict[float, dict[str, float]]:
    """Per noise level: the share of stills showing the true caption's shape (``true_shown``), the swapped
    word's shape (``swapped_shown``) and, under the swapped word, the old shape (``swapped_kept``)."""
    from reelkit.models.judge import load_judge
    from reelkit.vae.image_vae import load_image_vae

    world = dict(config["world"])
    world_slice = WorldSlice.from_dict(world)
    if world_slice.object_counts != (1,) or world_slice.backgrounds != ("solid",):
        raise ReelkitError("the swapped-word probe reads one-object stills on solid backgrounds (rung 1's slice)")
    world_slice = WorldSlice(**{**RUNGS[1].__dict__, "object_scale": world_slice.object_scale})
    vae = vae or load_image_vae("image_vae_f4")
    judge = judge or load_judge()
    size = config["size"]
    clips = [render_slice(seed, world_slice, size) for seed in heldout_slice_seeds(prompts)]
    clean = vae.encode(torch.stack([c.video[:, 0] for c in clips])).latent_dist.mean * vae.config.scaling_factor
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))
    true = [c.scene.objects[0].shape for c in clips]
    swapped = [SHAPES[(SHAPES.index(s) + 3) % len(SHAPES)] for s in true]

    def condition(shapes: list[str]) -> torch.Tensor:
        captions = [f"a {c.scene.objects[0].color} {shape} resting on a {c.scene.background.colors[0]} background"
                    for c, shape in zip(clips, shapes, strict=True)]
        labels = torch.tensor([slot_labels(c.scene) for c in clips])
        labels[:, 0] = torch.tensor([SHAPES.index(s) for s in shapes])
        return denoiser.condition(captions, labels)

    uncond = denoiser.condition([""] * len(clips), SlotEncoder.dropped(len(clips)))
    results = {}
    for level in levels:
        if not 0 < level <= 1:
            raise ReelkitError(f"noise levels lie in (0, 1], got {level}")
        shown = {}
        for name, shapes in (("true", true), ("swapped", swapped)):
            cond = condition(shapes)
            x = sample_flow(denoiser, cond, uncond, (1 - level) * clean + level * noise, steps, guidance, level)
            shown[name] = [objects[0]["shape"] if objects else None for objects in judge_stills(x, vae, judge)[1]]
        results[level] = {
            "true_shown": sum(a == b for a, b in zip(shown["true"], true, strict=True)) / len(clips),
            "swapped_shown": sum(a == b for a, b in zip(shown["swapped"], swapped, strict=True)) / len(clips),
            "swapped_kept": sum(a == b for a, b in zip(shown["swapped"], true, strict=True)) / len(clips),
        }
    return results


__all__ = ["load_ladder_model", "swapped_word_probe"]
