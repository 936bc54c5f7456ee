"""Masked losses: MarDini's planner and generator are trained only on the frames they must generate."""

from __future__ import annotations

import torch


def masked_mse(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the masked frames only."""
    weight = mask.expand_as(target).float()
    return ((prediction.float() - target.float()).pow(2) * weight).sum() / weight.sum().clamp(min=1)


__all__ = ["masked_mse"]
