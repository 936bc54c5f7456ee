"""Which frames are known: the reference masks of MarDini's tasks and of its training.

A reference mask is ``(B, T)`` bool, true for the known frames ([REF] in the generator, unmasked in the
planner). "Kept-frame ratio" is the paper's "mask ratio": the fraction of frames kept as references;
lowering it moves the task from interpolation towards image-to-video (section 2.4).

>>> import torch
>>> from reelkit.mardini.masking import reference_mask, sample_reference_mask
>>> reference_mask(5, [0, 4]).int().tolist()                      # interpolation: first and last known
[[1, 0, 0, 0, 1]]
>>> mask = sample_reference_mask(4, 9, (0.1, 0.6), torch.Generator().manual_seed(0))
>>> mask.shape, bool((mask.sum(1) >= 1).all() and (mask.sum(1) <= 8).all())  # >= 1 known, >= 1 to generate
(torch.Size([4, 9]), True)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from reelkit.errors import ShapeError

PATTERNS = ("prefix", "ends", "scattered")
"""Training layouts of the known frames: a prefix (expansion, image-to-video from the first frame), both
ends (interpolation), anywhere (in-filling, image-to-video from a middle frame)."""


def check_known_indices(num_frames: int, indices: Sequence[int]) -> list[int]:
    """The sorted known-frame indices, or a one-line error: out of range, repeated, or none left to make."""
    indices = [int(i) for i in indices]
    if not indices:
        raise ShapeError("give at least one known frame")
    bad = [i for i in indices if not 0 <= i < num_frames]
    if bad:
        raise ShapeError(f"known-frame index {bad[0]} is out of range for a clip of {num_frames} frames "
                         f"(0 to {num_frames - 1})")
    if len(indices) >= num_frames:
        raise ShapeError(f"{num_frames} frames are too few for {len(indices)} known frames: "
                         "nothing is left to generate")
    if len(set(indices)) != len(indices):
        raise ShapeError(f"known-frame indices repeat: {sorted(indices)}")
    return sorted(indices)


def reference_mask(num_frames: int, indices: Sequence[int], batch: int = 1) -> torch.Tensor:
    """``(batch, T)`` bool, true at the known ``indices``."""
    mask = torch.zeros(batch, num_frames, dtype=torch.bool)
    mask[:, check_known_indices(num_frames, indices)] = True
    return mask


def sample_reference_mask(batch: int, num_frames: int, keep_ratio: tuple[float, float],
                          generator: torch.Generator) -> torch.Tensor:
    """Training masks: per sample a kept-frame ratio drawn from ``keep_ratio``, the known frames laid out
    as a prefix, at both ends or scattered (:data:`PATTERNS`); always one known and one unknown frame."""
    low, high = keep_ratio
    mask = torch.zeros(batch, num_frames, dtype=torch.bool)
    for b in range(batch):
        ratio = low + (high - low) * float(torch.rand((), generator=generator))
        kept = min(max(round(ratio * num_frames), 1), num_frames - 1)
        pattern = PATTERNS[int(torch.randint(len(PATTERNS), (), generator=generator))]
        if pattern == "prefix":
            mask[b, :kept] = True
        elif pattern == "ends":
            mask[b, :(kept + 1) // 2] = True
            mask[b, num_frames - kept // 2:] = True
        else:
            mask[b, torch.randperm(num_frames, generator=generator)[:kept]] = True
    return mask


__all__ = ["PATTERNS", "check_known_indices", "reference_mask", "sample_reference_mask"]
