"""What users do with the VAEs: load them, reconstruct clips, and the baselines the CV-VAE is judged by.

Videos here are unbatched ``(C, T, H, W)`` or batched ``(B, C, T, H, W)`` in ``[-1, 1]``; latents are
unscaled (multiply by ``vae.config.scaling_factor`` before a diffusion model).

>>> import torch
>>> from reelkit.vae import CVVAE, build_image_vae, reconstruct, uniform_sampling_reconstruct
>>> image_vae = build_image_vae(block_out_channels=(8, 8, 8, 8), norm_num_groups=4).eval()
>>> video = torch.rand(3, 9, 32, 32) * 2 - 1
>>> reconstruct(CVVAE.from_image_vae(image_vae).eval(), video).shape
torch.Size([3, 9, 32, 32])
>>> uniform_sampling_reconstruct(image_vae, video).shape  # key frames 0, 4, 8; the rest blended
torch.Size([3, 9, 32, 32])
"""

from __future__ import annotations

from pathlib import Path

import torch

from reelkit.conventions import TEMPORAL_FACTOR, batch_to_frames, frames_to_batch
from reelkit.vae.cvvae import CVVAE
from reelkit.vae.losses import psi


def load_cvvae(path: str | Path | None = None, dtype: torch.dtype = torch.float32) -> CVVAE:
    """Load a CVVAE folder (diffusers layout); ``None`` loads the bundled checkpoint."""
    from reelkit.loading import load_model

    return load_model(CVVAE, path, "cvvae", dtype).eval()


def load_any_vae(path: str | Path):
    """An ``AutoencoderKL`` or ``CVVAE`` folder (or bundled name), whichever class its config names."""
    import json

    from diffusers import AutoencoderKL

    from reelkit.errors import ReelkitError
    from reelkit.loading import load_model, resolve_model_path

    folder = resolve_model_path(path, "cvvae")
    try:
        name = json.loads((folder / "config.json").read_text()).get("_class_name")
    except (OSError, ValueError):
        name = None
    classes = {"AutoencoderKL": AutoencoderKL, "CVVAE": CVVAE}
    if name not in classes:
        raise ReelkitError(f"{path}: not an AutoencoderKL or CVVAE folder")
    return load_model(classes[name], folder, name).eval()


def roundtrip_fn(vae):
    """``(B, C, T, H, W) -> same``: the CV-VAE's round trip, or the image VAE's frame by frame."""
    if isinstance(vae, CVVAE):
        return lambda video: reconstruct(vae, video)
    return lambda video: image_vae_reconstruct(vae, video)


def _batched(video: torch.Tensor) -> tuple[torch.Tensor, bool]:
    return (video[None], True) if video.ndim == 4 else (video, False)


@torch.no_grad()
def reconstruct(vae: CVVAE, video: torch.Tensor, sample: bool = False) -> torch.Tensor:
    """Encode and decode a clip with the CV-VAE (posterior mode unless ``sample``)."""
    x, unbatched = _batched(video)
    posterior = vae.encode(x.to(vae.device, vae.dtype)).latent_dist
    out = vae.decode(posterior.sample() if sample else posterior.mode()).sample.float().clamp(-1, 1)
    return out[0] if unbatched else out


@torch.no_grad()
def _image_roundtrip(image_vae, frames: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    """Encode+decode ``(N, C, H, W)`` images with the image VAE, ``batch_size`` at a time."""
    outs = []
    for chunk in frames.split(batch_size):
        z = image_vae.encode(chunk.to(image_vae.device, image_vae.dtype)).latent_dist.mode()
        outs.append(image_vae.decode(z).sample.float())
    return torch.cat(outs).clamp(-1, 1)


def image_vae_reconstruct(image_vae, video: torch.Tensor) -> torch.Tensor:
    """Every frame through the image VAE (1x temporal compression: the quality ceiling)."""
    x, unbatched = _batched(video)
    out = batch_to_frames(_image_roundtrip(image_vae, frames_to_batch(x)), x.shape[0])
    return out[0] if unbatched else out


def uniform_sampling_reconstruct(image_vae, video: torch.Tensor) -> torch.Tensor:
    """The baseline CV-VAE replaces: the image VAE on every 4th frame, frames in between blended linearly."""
    x, unbatched = _batched(video)
    keys = image_vae_reconstruct(image_vae, psi(x, "slice"))  # (B, C, 1+k, H, W)
    if keys.shape[2] == 1:
        out = keys
    else:
        w = torch.arange(1, TEMPORAL_FACTOR + 1, dtype=keys.dtype) / TEMPORAL_FACTOR  # 0.25 .. 1
        start, end = keys[:, :, :-1, None], keys[:, :, 1:, None]  # (B, C, k, 1, H, W)
        between = start + (end - start) * w.view(1, 1, 1, -1, 1, 1)  # (B, C, k, 4, H, W)
        out = torch.cat([keys[:, :, :1], between.flatten(2, 3)], dim=2)
    return out[0] if unbatched else out


@torch.no_grad()
def compat_decode(image_vae, vae: CVVAE, video: torch.Tensor) -> torch.Tensor:
    """The image VAE's decoder on each CV-VAE latent frame: ``1+k`` frames, to compare with psi(video)."""
    x, unbatched = _batched(video)
    z = vae.encode(x.to(vae.device, vae.dtype)).latent_dist.mode()
    frames = [image_vae.decode(chunk.to(image_vae.dtype)).sample.float() for chunk in frames_to_batch(z).split(16)]
    out = batch_to_frames(torch.cat(frames), x.shape[0]).clamp(-1, 1)
    return out[0] if unbatched else out
