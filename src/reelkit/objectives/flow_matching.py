"""Rectified flow (flow matching) with logit-normal noise levels: the teacher's objective (SD3, Esser et al. 2024).

``x_t = (1 - s) x_0 + s eps``; the model predicts the velocity ``eps - x_0``, which diffusers'
``FlowMatchEulerDiscreteScheduler`` integrates at sampling time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def flow_matching_loss(denoiser, latents: torch.Tensor, tokens: dict, generator: torch.Generator,
                       logit_mean: float = 0.0, logit_std: float = 1.0) -> torch.Tensor:
    """Rectified-flow velocity loss with logit-normal noise levels (SD3, section 3.1)."""
    sigma = torch.sigmoid(logit_mean + logit_std * torch.randn(len(latents), generator=generator))
    sigma = sigma.to(latents.device)
    noise = torch.randn(latents.shape, generator=generator).to(latents.device)
    s = sigma.view(-1, 1, 1, 1, 1)
    noisy = (1 - s) * latents + s * noise
    prediction = denoiser(noisy, sigma * 1000, tokens["input_ids"], tokens["attention_mask"])
    return F.mse_loss(prediction.float(), (noise - latents).float())


__all__ = ["flow_matching_loss"]
