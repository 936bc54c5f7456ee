"""Frame latents for MarDini: every frame encoded on its own by the image VAE, at two resolutions.

MarDini masks whole frames at any positions, so each frame needs its own latent: a video VAE with 4x
temporal compression ties four frames into one latent and could not hold frame 7 known and frame 8
unknown. The image VAE is the CV-VAE's partner (same latent space, 8 channels, 8x spatial), so the
planner and generator work in the latent space the rest of reelkit shares. The planner reads the clip
downsampled by ``planner_scale``; the generator reads it at full size.

>>> import torch
>>> from reelkit.vae.image_vae import build_image_vae
>>> from reelkit.mardini.latents import encode_frames, downsample
>>> vae = build_image_vae(block_out_channels=(8, 8, 8, 8), norm_num_groups=4)
>>> video = torch.rand(1, 3, 5, 32, 32) * 2 - 1                 # (B, C, T, H, W) in [-1, 1]
>>> encode_frames(vae, video).shape, encode_frames(vae, downsample(video, 2)).shape
(torch.Size([1, 8, 5, 4, 4]), torch.Size([1, 8, 5, 2, 2]))
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def downsample(video: torch.Tensor, factor: int) -> torch.Tensor:
    """``(B, C, T, H, W)`` to ``(B, C, T, H/factor, W/factor)`` with an anti-aliased bilinear filter."""
    if factor == 1:
        return video
    B, C, T, H, W = video.shape
    frames = video.transpose(1, 2).reshape(B * T, C, H, W)
    small = F.interpolate(frames, size=(H // factor, W // factor), mode="bilinear", antialias=True,
                          align_corners=False)
    return small.view(B, T, C, H // factor, W // factor).transpose(1, 2)


def encode_frames(vae, video: torch.Tensor, batch_frames: int = 256) -> torch.Tensor:
    """Per-frame posterior means, scaled by the VAE's ``scaling_factor``: ``(B, 3, T, H, W)`` pixels to
    ``(B, 8, T, H/8, W/8)`` latents."""
    B, C, T, H, W = video.shape
    frames = video.transpose(1, 2).reshape(B * T, C, H, W).to(vae.dtype)
    latents = torch.cat([vae.encode(chunk).latent_dist.mean for chunk in frames.split(batch_frames)])
    latents = latents * vae.config.scaling_factor
    return latents.view(B, T, *latents.shape[1:]).transpose(1, 2)


def decode_frames(vae, latents: torch.Tensor, batch_frames: int = 64) -> torch.Tensor:
    """The inverse of :func:`encode_frames`: ``(B, 8, T, h, w)`` latents to ``(B, 3, T, 8h, 8w)`` pixels."""
    B, C, T, h, w = latents.shape
    frames = latents.transpose(1, 2).reshape(B * T, C, h, w).to(vae.dtype) / vae.config.scaling_factor
    pixels = torch.cat([vae.decode(chunk).sample for chunk in frames.split(batch_frames)]).clamp(-1, 1)
    return pixels.view(B, T, *pixels.shape[1:]).transpose(1, 2)


__all__ = ["decode_frames", "downsample", "encode_frames"]
