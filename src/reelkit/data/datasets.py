"""Torch datasets over the demo world.

Seeds name clips. The **held-out split** is the fixed seeds ``HELDOUT_SEED_BASE + i`` for
``i < HELDOUT_SIZE``; training only ever uses seeds below ``HELDOUT_SEED_BASE``, so no model of the
embedded default has seen a held-out clip. Evaluation suites all read the same held-out clips.

>>> from torch.utils.data import DataLoader
>>> from reelkit.data.datasets import WorldDataset
>>> loader = DataLoader(WorldDataset("heldout", num_frames=9, size=32, length=4), batch_size=2)
>>> batch = next(iter(loader))
>>> batch["video"].shape, batch["shape"].shape  # (B, C, T, H, W); labels padded to 2 objects
(torch.Size([2, 3, 9, 32, 32]), torch.Size([2, 2]))
"""

from __future__ import annotations

import numpy as np
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from reelkit.conventions import as_height_width, round_down_frames
from reelkit.data.world import WorldClip, object_coverage, render_clip

HELDOUT_SEED_BASE = 1_000_000_000
HELDOUT_SIZE = 512
SPLITS = ("train", "heldout")


def heldout_seeds(count: int = HELDOUT_SIZE) -> list[int]:
    """The first ``count`` seeds of the fixed held-out split."""
    if not 0 < count <= HELDOUT_SIZE:
        raise ValueError(f"the held-out split has {HELDOUT_SIZE} clips; asked for {count}")
    return [HELDOUT_SEED_BASE + i for i in range(count)]


def clip_to_example(clip: WorldClip) -> dict:
    """A clip as a collatable dict: ``video`` (C, T, H, W), ``caption``, ``seed`` and label tensors."""
    return {"video": clip.video, "caption": clip.caption, "seed": clip.seed, **clip.scene.label_tensors()}


class WorldDataset(Dataset):
    """Map-style dataset of demo-world clips: item ``i`` is the clip of seed ``first_seed + i``.

    ``split="train"`` covers seeds ``[first_seed, first_seed + length)`` (``length`` defaults to 10,000
    and the range must stay below the held-out seeds); ``"heldout"`` is the fixed evaluation split
    (all 512 clips, or the first ``length``).
    """

    def __init__(self, split: str = "train", num_frames: int = 17, size: int | tuple[int, int] = 64,
                 length: int | None = None, first_seed: int = 0):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.split = split
        self.num_frames = round_down_frames(num_frames)
        self.size = as_height_width(size)
        if split == "heldout":
            self.seeds = heldout_seeds(length or HELDOUT_SIZE)
        else:
            length = 10_000 if length is None else length
            if first_seed < 0 or first_seed + length > HELDOUT_SEED_BASE:
                raise ValueError("training seeds must lie in [0, HELDOUT_SEED_BASE)")
            self.seeds = range(first_seed, first_seed + length)

    def __len__(self) -> int:
        return len(self.seeds)

    def __getitem__(self, index: int) -> dict:
        return clip_to_example(render_clip(self.seeds[index], self.num_frames, self.size))


class WorldStream(IterableDataset):
    """An endless stream of fresh training clips, different in every DataLoader worker and process.

    Seeds come from a generator keyed on ``(seed, rank, worker)``, so a run is reproducible and
    processes never duplicate each other's clips.
    """

    def __init__(self, num_frames: int = 17, size: int | tuple[int, int] = 64, seed: int = 0, rank: int = 0):
        self.num_frames = round_down_frames(num_frames)
        self.size = as_height_width(size)
        self.seed = seed
        self.rank = rank

    def __iter__(self):
        worker = get_worker_info()
        worker_id = worker.id if worker is not None else 0
        rng = np.random.default_rng([self.seed, self.rank, worker_id])
        while True:
            seed = int(rng.integers(0, HELDOUT_SEED_BASE))
            yield clip_to_example(render_clip(seed, self.num_frames, self.size))



class VaeTrainStream(IterableDataset):
    """VAE training clips: demo-world clips, mixed with camera-motion clips over natural photos.

    A fraction ``photo_fraction`` of the clips come from :func:`reelkit.data.camera.camera_clip`
    (with ``num_frames=1``: random photo crops); the rest are demo-world clips of training seeds.
    Streams differ per ``(seed, rank, worker)`` like :class:`WorldStream`. Items are ``(C, T, H, W)``;
    with ``with_coverage`` they are ``(video, coverage)``, ``coverage`` ``(1, T, H, W)`` the demo world's
    object coverage (:func:`~reelkit.data.world.object_coverage`; zeros for photo clips).
    """

    def __init__(self, num_frames: int = 17, size: int | tuple[int, int] = 64, photo_fraction: float = 0.5,
                 seed: int = 0, rank: int = 0, with_coverage: bool = False):
        if not 0.0 <= photo_fraction <= 1.0:
            raise ValueError(f"photo_fraction must lie in [0, 1], got {photo_fraction}")
        self.num_frames = round_down_frames(num_frames)
        self.size = as_height_width(size)
        self.photo_fraction = photo_fraction
        self.seed = seed
        self.rank = rank
        self.with_coverage = with_coverage

    def __iter__(self):
        import torch

        from reelkit.data.camera import camera_clip

        worker = get_worker_info()
        worker_id = worker.id if worker is not None else 0
        rng = np.random.default_rng([self.seed, self.rank, worker_id, 0x7AE])
        while True:
            seed = int(rng.integers(0, HELDOUT_SEED_BASE))
            if rng.random() < self.photo_fraction:
                video = camera_clip(seed, self.num_frames, self.size)
                coverage = torch.zeros(1, *video.shape[1:]) if self.with_coverage else None
            else:
                clip = render_clip(seed, self.num_frames, self.size)
                video = clip.video
                coverage = object_coverage(clip.scene, self.num_frames, self.size)[None] if self.with_coverage else None
            yield video if coverage is None else (video, coverage)
