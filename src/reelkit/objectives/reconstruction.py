"""Reconstruction losses of the VAE recipes: L1 + MSE, optionally weighted towards the demo world's objects
(the pilot that rebuilt the latent space: objects weighted 5x took the judge's shape reading from 0.18 to 0.90)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from reelkit.conventions import batch_to_frames, frames_to_batch


def weighted_reconstruction(reconstruction: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None,
                            mse_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(L1 + ``mse_weight`` * MSE, L1), each a weighted mean over pixels (``weight`` broadcasts over
    channels; ``None``: uniform)."""
    error = reconstruction.float() - target
    if weight is None:
        l1 = error.abs().mean()
        return l1 + mse_weight * error.pow(2).mean(), l1
    norm = weight.mean()
    l1 = (weight * error.abs()).mean() / norm
    return l1 + mse_weight * (weight * error.pow(2)).mean() / norm, l1


def object_weights(coverage: torch.Tensor, object_weight: float) -> torch.Tensor:
    """``1 + object_weight`` on the objects and one pixel around them (their edges), 1 elsewhere;
    ``coverage`` is ``(N, 1, H, W)`` or ``(B, 1, T, H, W)``."""
    frames = coverage if coverage.ndim == 4 else frames_to_batch(coverage)
    grown = F.max_pool2d(frames, 3, stride=1, padding=1)
    if coverage.ndim == 5:
        grown = batch_to_frames(grown, coverage.shape[0])
    return 1.0 + object_weight * grown


__all__ = ["object_weights", "weighted_reconstruction"]
