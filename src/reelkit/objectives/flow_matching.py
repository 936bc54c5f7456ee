"""Rectified flow (flow matching) with logit-normal noise levels: the teacher's objective (SD3, Esser et al. 2024).

``x_t = (1 - s) x_0 + s eps``; the model predicts the velocity ``eps - x_0``, which diffusers'
``FlowMatchEulerDiscreteScheduler`` integrates at sampling time. ``contrastive = lambda`` adds contrastive flow
matching (Stoica et al. 2025, Delta-FM): ``- lambda ||v_theta - v~||^2`` with ``v~`` the velocity of another
sample of the batch (its clip and its noise), which pushes the conditional flows of different captions apart.
"""

from __future__ import annotations

import torch


def flow_matching_loss(denoiser, latents: torch.Tensor, tokens: dict, generator: torch.Generator,
                       logit_mean: float = 0.0, logit_std: float = 1.0, weight: torch.Tensor | None = None,
                       weight_sigmas: tuple[float, float] | None = None, paired: int = 0,
                       sigmas_out: list | None = None, contrastive: float = 0.0) -> torch.Tensor:
    """Rectified-flow velocity loss with logit-normal noise levels (SD3, section 3.1); ``weight`` (broadcast to
    the latents, e.g. ``(B, 1, T, h, w)``) weighs the squared error per latent pixel (normalised by its mean),
    only on the samples whose noise level lies in ``weight_sigmas = (low, high)`` when that is given. ``paired``:
    the last ``paired`` samples are twins of the ``paired`` before them and get the same noise and noise level,
    so the pair differs only in what its captions and clips differ in. ``sigmas_out``: a list that receives
    the ``(B,)`` noise levels drawn (for an auxiliary loss on the same forward). ``contrastive``: Delta-FM's
    weight; each sample's negative is the previous one in the batch, a twin's is its partner (same noise, other
    shapes)."""
    sigma = torch.sigmoid(logit_mean + logit_std * torch.randn(len(latents), generator=generator))
    noise = torch.randn(latents.shape, generator=generator)
    if paired:
        sigma[-paired:], noise[-paired:] = sigma[-2 * paired:-paired], noise[-2 * paired:-paired]
    sigma, noise = sigma.to(latents.device), noise.to(latents.device)
    if sigmas_out is not None:
        sigmas_out.append(sigma)
    s = sigma.view(-1, 1, 1, 1, 1)
    noisy = (1 - s) * latents + s * noise
    prediction = denoiser(noisy, sigma * 1000, tokens["input_ids"], tokens["attention_mask"]).float()
    target = (noise - latents).float()
    error = (prediction - target).pow(2)
    if contrastive:
        negative = target.roll(1, 0)  # (B, C, T, h, w): the previous sample's velocity
        if paired:
            plain = len(latents) - 2 * paired
            negative[plain:] = torch.cat([target[-paired:], target[plain:-paired]])
        error = error - contrastive * (prediction - negative).pow(2)
    if weight is None:
        return error.mean()
    weight = weight.to(error).expand_as(error)
    if weight_sigmas is not None:
        # A weight that depends on where the objects are tilts the prediction towards drawing an object wherever
        # one may be; once x_t fixes the layout (mid noise) the weight only stresses what the objects look like.
        low, high = weight_sigmas
        s = s.to(error.device)
        weight = torch.where((s >= low) & (s < high), weight, torch.ones_like(weight))
    return (error * weight).mean() / weight.mean()


__all__ = ["flow_matching_loss"]
