"""Slices of the demo world, from the simplest up: the rungs a teacher is trained on one after another.

A :class:`WorldSlice` narrows :func:`~reelkit.data.world.sample_scene`: how many objects, which background
kinds, whether objects move, how many frames, and how large objects are. The ladder of issue 36:

====  ==============================================  =====================================================
rung  slice                                           why
====  ==============================================  =====================================================
1     stills, one static object, solid background     shape binding with nothing else to learn
2     stills of the full world                        gradients, textures, two objects
3     clips, one moving object, solid background      motion added to rung 1
4     the full world's clips                          the teacher's task
====  ==============================================  =====================================================

The same seed gives the same scene at any size; a slice draws its own choices (object count, background
kind) from a stream of the seed separate from the scene's, and captions come from the world's caption writer,
so a still's caption names its object "standing still", "resting", ... and its background.

>>> from reelkit.data.ladder import RUNGS, render_slice
>>> clip = render_slice(0, RUNGS[1], size=64)
>>> clip.video.shape, len(clip.scene.objects), clip.scene.background.kind
(torch.Size([3, 1, 64, 64]), 1, 'solid')
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from reelkit.conventions import is_valid_frame_count
from reelkit.data.captions import BACKGROUND_KINDS, PartialBackground, PartialObject, write_caption
from reelkit.data.datasets import HELDOUT_SEED_BASE
from reelkit.data.world import Scene, WorldClip, render_scene, sample_scene
from reelkit.errors import ReelkitError


@dataclass(frozen=True)
class WorldSlice:
    """Which scenes of the world a rung draws (see the module docstring)."""

    num_frames: int = 17
    object_counts: tuple[int, ...] = (1, 2)
    backgrounds: tuple[str, ...] = BACKGROUND_KINDS
    moving: bool = True  # False: every object "static" (stills)
    object_scale: float = 1.0

    def __post_init__(self):
        if not is_valid_frame_count(self.num_frames):
            raise ReelkitError(f"a slice's num_frames must be 1 + 4k, got {self.num_frames}")
        if not self.object_counts or not set(self.object_counts) <= {1, 2}:
            raise ReelkitError(f"a slice's object_counts must be among 1, 2; got {list(self.object_counts)}")
        unknown = set(self.backgrounds) - set(BACKGROUND_KINDS)
        if not self.backgrounds or unknown:
            raise ReelkitError(f"a slice's backgrounds must be among {', '.join(BACKGROUND_KINDS)}; got "
                               f"{list(self.backgrounds)}")
        if not 0.25 <= self.object_scale <= 3.0:
            raise ReelkitError(f"a slice's object_scale must lie in 0.25 .. 3, got {self.object_scale}")

    @classmethod
    def from_dict(cls, values: dict) -> WorldSlice:
        """A slice from a config's ``world:`` mapping (``rung: N`` starts from rung N's slice)."""
        values = dict(values)
        base = RUNGS[_rung(values.pop("rung"))] if "rung" in values else cls()
        known = set(cls.__dataclass_fields__)
        unknown = set(values) - known
        if unknown:
            raise ReelkitError(f"unknown world slice keys: {', '.join(sorted(unknown))} (known: rung, "
                               f"{', '.join(sorted(known))})")
        for key in ("object_counts", "backgrounds"):
            if key in values:
                values[key] = tuple(values[key]) if isinstance(values[key], list | tuple) else (values[key],)
        return cls(**{**base.__dict__, **values})


RUNGS = {
    1: WorldSlice(num_frames=1, object_counts=(1,), backgrounds=("solid",), moving=False),
    2: WorldSlice(num_frames=1, moving=False),
    3: WorldSlice(num_frames=17, object_counts=(1,), backgrounds=("solid",)),
    4: WorldSlice(),
}


def _rung(value) -> int:
    if isinstance(value, bool) or value not in RUNGS:
        raise ReelkitError(f"rung must be one of {', '.join(map(str, RUNGS))}, got {value!r}")
    return value


def slice_scene(seed: int, world_slice: WorldSlice) -> tuple[Scene, str]:
    """The scene of ``seed`` within ``world_slice`` and its caption."""
    rng = np.random.default_rng([seed, 3])
    count = world_slice.object_counts[int(rng.integers(len(world_slice.object_counts)))]
    kind = world_slice.backgrounds[int(rng.integers(len(world_slice.backgrounds)))]
    want = PartialObject(motion=None if world_slice.moving else "static")
    scene = sample_scene(seed, [want] * count, PartialBackground(kind=kind), world_slice.object_scale)
    return scene, write_caption(scene.objects, scene.background, np.random.default_rng([seed, 1]))


def render_slice(seed: int, world_slice: WorldSlice, size: int = 64) -> WorldClip:
    """Render the clip (a still when ``num_frames`` is 1) of ``seed`` within ``world_slice``."""
    scene, caption = slice_scene(seed, world_slice)
    return WorldClip(render_scene(scene, world_slice.num_frames, size), caption, scene, seed)


def heldout_slice_seeds(count: int) -> list[int]:
    """The seeds of a slice's held-out prompts (never below :data:`HELDOUT_SEED_BASE`)."""
    return [HELDOUT_SEED_BASE + i for i in range(count)]


__all__ = ["HELDOUT_SEED_BASE", "RUNGS", "WorldSlice", "heldout_slice_seeds", "render_slice", "slice_scene"]
