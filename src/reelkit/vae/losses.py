"""CV-VAE training losses (paper section 3.1, eqs. 1-3): the mapping psi, KL, the decoder
regularisation through the frozen image decoder, and an optional 3D PatchGAN.

>>> import torch
>>> from reelkit.vae.losses import psi
>>> video = torch.arange(9.0).view(1, 1, 9, 1, 1)  # frames 0..8
>>> psi(video, "slice").flatten().tolist(), psi(video, "average").flatten().tolist()
([0.0, 4.0, 8.0], [0.0, 2.5, 6.5])
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from reelkit.conventions import TEMPORAL_FACTOR, batch_to_frames, frames_to_batch, is_valid_frame_count
from reelkit.errors import ShapeError

MAPPINGS = ("first", "slice", "average", "random")


def psi(video: torch.Tensor, mapping: str = "random", generator: torch.Generator | None = None) -> torch.Tensor:
    """Map ``1+4k`` frames to the ``1+k`` frames a latent frame stands for (CV-VAE's psi).

    ``first``: the first frame, repeated; ``slice``: frames 0, 4, 8, ...; ``average``: frame 0, then
    the mean of each group of 4; ``random``: frame 0, then one random frame of each group of 4.
    ``video`` is ``(B, C, T, H, W)``; the result is ``(B, C, 1+k, H, W)``.
    """
    if mapping not in MAPPINGS:
        raise ValueError(f"mapping must be one of {MAPPINGS}, got {mapping!r}")
    num_frames = video.shape[2]
    if not is_valid_frame_count(num_frames):
        raise ShapeError(f"psi needs 1+4k frames, got {num_frames}")
    k = (num_frames - 1) // TEMPORAL_FACTOR
    first = video[:, :, :1]
    if k == 0:
        return first
    groups = video[:, :, 1:].unflatten(2, (k, TEMPORAL_FACTOR))  # (B, C, k, 4, H, W)
    if mapping == "first":
        rest = first.expand(-1, -1, k, -1, -1)
    elif mapping == "slice":
        rest = groups[:, :, :, -1]
    elif mapping == "average":
        rest = groups.mean(dim=3)
    else:
        pick = torch.randint(0, TEMPORAL_FACTOR, (k,), generator=generator, device="cpu").to(video.device)
        rest = groups[:, :, torch.arange(k, device=video.device), pick]
    return torch.cat([first, rest], dim=2)


def kl_loss(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)), mean per latent element."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()


def decoder_regularisation(image_decode, latents: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 between ``target = psi(X)`` and the frozen image decoder run on each latent frame (L_reg^dec).

    ``image_decode`` maps ``(N, c, h, w)`` latents to ``(N, 3, H, W)`` images; gradients flow through it
    into the video encoder (the image VAE's own parameters stay frozen).
    """
    decoded = image_decode(frames_to_batch(latents))
    return F.l1_loss(batch_to_frames(decoded, latents.shape[0]), target)


class PatchDiscriminator3D(nn.Module):
    """A 3D PatchGAN (non-causal): strided 3D convs with GroupNorm and LeakyReLU(0.2), one logit per patch."""

    def __init__(self, in_channels: int = 3, channels: int = 32, layers: int = 3):
        super().__init__()
        blocks: list[nn.Module] = [nn.Conv3d(in_channels, channels, 4, stride=(1, 2, 2), padding=(2, 1, 1)),
                                   nn.LeakyReLU(0.2)]
        width = channels
        for _ in range(layers - 1):
            blocks += [nn.Conv3d(width, width * 2, 4, stride=(2, 2, 2), padding=1), nn.GroupNorm(8, width * 2),
                       nn.LeakyReLU(0.2)]
            width *= 2
        blocks.append(nn.Conv3d(width, 1, 3, padding=1))
        self.net = nn.Sequential(*blocks)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.net(video)


def hinge_discriminator_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def adaptive_gan_weight(nll: torch.Tensor, gan: torch.Tensor, last_layer: torch.Tensor,
                        max_weight: float = 1e4) -> torch.Tensor:
    """lambda_adv = ||grad_last NLL|| / (||grad_last G|| + 1e-4), clamped (Esser et al., taming-transformers)."""
    nll_grad = torch.autograd.grad(nll, last_layer, retain_graph=True)[0]
    gan_grad = torch.autograd.grad(gan, last_layer, retain_graph=True)[0]
    return (nll_grad.norm() / (gan_grad.norm() + 1e-4)).clamp(0.0, max_weight).detach()
