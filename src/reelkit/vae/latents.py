"""Latents on disk: one safetensors file with the tensor and what is needed to decode it safely.

>>> import os, tempfile, torch
>>> from reelkit.vae import CVVAE, build_image_vae
>>> from reelkit.vae.latents import load_latents, save_latents
>>> vae = CVVAE.from_image_vae(build_image_vae(block_out_channels=(8, 8, 8, 8), norm_num_groups=4))
>>> path = os.path.join(tempfile.mkdtemp(), "z.safetensors")
>>> _ = save_latents(torch.zeros(8, 3, 4, 4), path, vae, fps=8)
>>> z, fps = load_latents(path, vae)
>>> tuple(z.shape), fps
((8, 3, 4, 4), 8.0)
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from reelkit.errors import ReelkitError
from reelkit.files import atomic_path

KEY = "latents"


def save_latents(z: torch.Tensor, path: str | os.PathLike, vae, fps: float) -> Path:
    """Save unscaled latents ``(c, n, h, w)`` with the frame rate and the VAE's latent layout."""
    path = Path(path)
    if not torch.isfinite(z).all():
        raise ReelkitError(f"{path}: the latents hold non-finite (NaN or inf) values; nothing was written")
    metadata = {"format": "reelkit-cvvae-latents", "fps": f"{fps:g}", "latent_channels": str(z.shape[0]),
                "spatial_compression": str(vae.spatial_compression), "temporal_compression": "4"}
    with atomic_path(path) as tmp:
        save_file({KEY: z.detach().float().contiguous().cpu()}, str(tmp), metadata=metadata)
    return path


def load_latents(path: str | os.PathLike, vae) -> tuple[torch.Tensor, float]:
    """Load latents saved by :func:`save_latents`, checking they fit ``vae``; returns ``(z, fps)``."""
    path = Path(path)
    if not path.is_file():
        raise ReelkitError(f"{path}: no such file")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        z = load_file(str(path))[KEY]
    except (SafetensorError, OSError, KeyError) as error:
        raise ReelkitError(f"{path}: not a reelkit latents file ({' '.join(str(error).split())[:120]})") from None
    if z.ndim != 4:
        raise ReelkitError(f"{path}: latents must be (c, n, h, w), got {tuple(z.shape)}")
    if z.shape[0] != vae.config.latent_channels:
        raise ReelkitError(f"{path}: latents have {z.shape[0]} channels; this VAE expects "
                           f"{vae.config.latent_channels}")
    return z, float(metadata.get("fps", 8.0))
