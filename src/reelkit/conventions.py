"""The tensor conventions every part of reelkit shares (see docs/architecture.md).

* Pixel videos are ``(B, C, T, H, W)`` (or ``(C, T, H, W)`` unbatched) float tensors in ``[-1, 1]``.
* Heights and widths are multiples of 8 (the VAE's spatial factor).
* Clips have ``1 + 4k`` frames so the 4x temporal VAE maps them to ``1 + k`` latent frames.
  The one rule for any other count: round *down* to ``1 + 4k`` and tell the user.
"""

from __future__ import annotations

import logging
import os

import torch

from reelkit.errors import ShapeError

logger = logging.getLogger("reelkit")

SPATIAL_MULTIPLE = 8
TEMPORAL_FACTOR = 4


def is_valid_frame_count(num_frames: int) -> bool:
    """True when ``num_frames`` has the form ``1 + 4k`` (k >= 0)."""
    return num_frames >= 1 and (num_frames - 1) % TEMPORAL_FACTOR == 0


def round_down_frames(num_frames: int) -> int:
    """Round a frame count down to ``1 + 4k``, logging a notice when it changes.

    >>> round_down_frames(18)
    17
    """
    if num_frames < 1:
        raise ShapeError(f"a clip needs at least 1 frame, got {num_frames}")
    rounded = 1 + TEMPORAL_FACTOR * ((num_frames - 1) // TEMPORAL_FACTOR)
    if rounded != num_frames:
        logger.warning("%d frames is not 1+4k; using %d", num_frames, rounded)
    return rounded


def check_size(size: int, what: str = "size") -> int:
    """Return ``size`` if it is a positive multiple of 8, else raise :class:`ShapeError` with neighbours."""
    if size < SPATIAL_MULTIPLE or size % SPATIAL_MULTIPLE:
        lower = max(SPATIAL_MULTIPLE, size - size % SPATIAL_MULTIPLE)
        upper = lower + SPATIAL_MULTIPLE if size > lower else lower
        hint = f"{lower}" if lower == upper else f"{lower} or {upper}"
        raise ShapeError(f"{what} {size} is not a positive multiple of {SPATIAL_MULTIPLE} (try {hint})")
    return size


def as_height_width(size: int | tuple[int, int]) -> tuple[int, int]:
    """``64`` -> ``(64, 64)``; ``(48, 80)`` stays; both checked to be multiples of 8."""
    height, width = (size, size) if isinstance(size, int) else size
    return check_size(height, "height"), check_size(width, "width")


def check_video_fits(num_frames: int, height: int, width: int, channels: int = 3) -> None:
    """Refuse a float32 video larger than the memory this machine has free, before allocating it."""
    needed = 4 * channels * num_frames * height * width
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not on Linux: let the allocator decide
        return
    if needed > available:
        raise ShapeError(f"a {channels}x{num_frames}x{height}x{width} float video needs {needed / 2**30:.1f} GiB; "
                         f"{available / 2**30:.1f} GiB of memory is free")


def frames_to_batch(video: torch.Tensor) -> torch.Tensor:
    """(B, C, T, H, W) -> (B*T, C, H, W), frames in the batch."""
    return video.transpose(1, 2).flatten(0, 1)


def batch_to_frames(images: torch.Tensor, batch: int) -> torch.Tensor:
    """(B*T, C, H, W) -> (B, C, T, H, W)."""
    return images.unflatten(0, (batch, -1)).transpose(1, 2)
