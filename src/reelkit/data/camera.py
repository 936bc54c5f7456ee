"""Camera-motion clips synthesised from natural photos: pan, zoom and rotate, for VAE training.

A clip is a sequence of affine views of one photo (``grid_sample`` with bilinear filtering), the
camera moving smoothly from a start pose to an end pose. One frame (``num_frames=1``) is a random
crop: the image-VAE's natural-photo data.

>>> from reelkit.data.camera import camera_clip
>>> clip = camera_clip(seed=3, num_frames=9, size=32)
>>> clip.shape, bool(clip.min() >= -1), bool(clip.max() <= 1)  # (C, T, H, W) in [-1, 1]
(torch.Size([3, 9, 32, 32]), True, True)
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from reelkit.conventions import as_height_width
from reelkit.data.photos import COLOR_PHOTOS, TEXTURE_PHOTOS, load_photo

PHOTOS = COLOR_PHOTOS + tuple(TEXTURE_PHOTOS.values())
MOTIONS = ("pan", "zoom", "rotate", "pan_zoom")


def _pose(rng: np.random.Generator, motion: str, num_frames: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-frame (scale, angle, centre) of the view window, in normalised photo coordinates."""
    s = np.linspace(0.0, 1.0, num_frames)
    scale0 = rng.uniform(0.15, 0.6)  # window side as a fraction of the photo's shorter side
    centre0 = rng.uniform(-0.4, 0.4, size=2)
    angle0 = rng.uniform(-0.3, 0.3)
    speed = rng.uniform(0.3, 1.0)  # fraction of the largest motion the clip covers
    scale = np.full(num_frames, scale0)
    angle = np.full(num_frames, angle0)
    centre = np.repeat(centre0[None], num_frames, axis=0)
    if motion in ("pan", "pan_zoom"):
        direction = rng.normal(size=2)
        centre = centre + speed * 0.35 * s[:, None] * direction / np.linalg.norm(direction)
    if motion in ("zoom", "pan_zoom"):
        scale = scale0 * np.exp(speed * rng.choice([-0.7, 0.7]) * s)
    if motion == "rotate":
        angle = angle0 + speed * rng.choice([-1.0, 1.0]) * math.pi / 4 * s
    return scale, angle, centre


def camera_clip(seed: int, num_frames: int = 17, size: int | tuple[int, int] = 64,
                photo: str | None = None, motion: str | None = None) -> torch.Tensor:
    """A ``(3, T, H, W)`` clip in ``[-1, 1]`` of a camera moving over a scikit-image photo.

    The seed picks the photo, the motion (pan, zoom, rotate or pan+zoom), its speed and direction,
    unless ``photo`` or ``motion`` name them. The same seed gives the same clip.
    """
    height, width = as_height_width(size)
    rng = np.random.default_rng([seed, 0xCA3])
    photo = photo or PHOTOS[int(rng.integers(len(PHOTOS)))]
    motion = motion or MOTIONS[int(rng.integers(len(MOTIONS)))]
    image = load_photo(photo)  # (3, Hp, Wp) in [0, 1]
    if rng.random() < 0.5:
        image = image.flip(-1)
    scale, angle, centre = _pose(rng, motion, num_frames)
    _, photo_h, photo_w = image.shape
    aspect = width / height
    # affine_grid maps output coords in [-1, 1] to input coords in [-1, 1]; a square-pixel window of
    # side `scale` (in shorter-side units), rotated by `angle`, centred at `centre`.
    short = min(photo_h, photo_w)
    sx, sy = scale * aspect * short / photo_w, scale * short / photo_h
    cos, sin = np.cos(angle), np.sin(angle)
    theta = np.stack([np.stack([sx * cos, -sy * sin * photo_h / photo_w, centre[:, 0]], -1),
                      np.stack([sx * sin * photo_w / photo_h, sy * cos, centre[:, 1]], -1)], 1)
    grid = F.affine_grid(torch.from_numpy(theta).float(), [num_frames, 3, height, width], align_corners=False)
    frames = F.grid_sample(image[None].expand(num_frames, -1, -1, -1), grid, mode="bilinear",
                           padding_mode="reflection", align_corners=False)  # (T, 3, H, W)
    return (frames.permute(1, 0, 2, 3) * 2 - 1).clamp(-1, 1).contiguous()
