"""Reference-based video quality (torchmetrics), on ``(C, T, H, W)`` or ``(B, C, T, H, W)`` in ``[-1, 1]``.

>>> import torch
>>> from reelkit.metrics import video_psnr
>>> a = torch.zeros(3, 5, 16, 16)
>>> round(video_psnr(a, a + 0.02), 2)  # an error of 1% of the [-1, 1] range
40.0
"""

from __future__ import annotations

import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure


def _frames(video: torch.Tensor) -> torch.Tensor:
    """(B, C, T, H, W) or (C, T, H, W) -> (B*T, C, H, W) in [0, 1]."""
    if video.ndim == 4:
        video = video[None]
    if video.ndim != 5:
        raise ValueError(f"expected a (B, C, T, H, W) or (C, T, H, W) video, got {tuple(video.shape)}")
    b, c, t, h, w = video.shape
    return ((video.float().clamp(-1, 1) + 1) / 2).permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)


def _check_pair(prediction: torch.Tensor, target: torch.Tensor) -> None:
    if prediction.shape != target.shape:
        raise ValueError(f"videos differ in shape: {tuple(prediction.shape)} vs {tuple(target.shape)}")


def video_psnr(prediction: torch.Tensor, target: torch.Tensor) -> float:
    """PSNR in dB over all frames, pixel range [0, 1] (i.e. [-1, 1] videos mapped to [0, 1])."""
    _check_pair(prediction, target)
    return float(peak_signal_noise_ratio(_frames(prediction), _frames(target), data_range=1.0))


def video_ssim(prediction: torch.Tensor, target: torch.Tensor) -> float:
    """Mean per-frame SSIM, pixel range [0, 1]."""
    _check_pair(prediction, target)
    return float(structural_similarity_index_measure(_frames(prediction), _frames(target), data_range=1.0))
