"""The image VAE: a diffusers ``AutoencoderKL`` (8x spatial), trained here from scratch.

Why 8 latent channels: twice Stable Diffusion's 4, because the CV-VAE authors trace the detail their
z=4 model loses at 512+ px to the 4-channel bottleneck (CV-VAE issue #7); half SD3's 16, because the
small diffusion models of the embedded default learn faster in a compact latent. Four levels of
(32, 64, 128, 128) channels with one ResBlock each keep training and inference CPU-sized.

>>> from reelkit.vae.image_vae import build_image_vae
>>> vae = build_image_vae(block_out_channels=(32, 32, 32, 32))
>>> vae.config.latent_channels, 2 ** (len(vae.config.block_out_channels) - 1)  # channels, spatial factor
(8, 8)
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL

IMAGE_VAE_CONFIG = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [32, 64, 128, 128],
    "layers_per_block": 1,
    "latent_channels": 8,
    "norm_num_groups": 32,
    "sample_size": 128,
    "scaling_factor": 1.0,  # set from the latents' spread after training (see `reelkit.train.vae`)
}
"""The embedded default's image VAE architecture."""



def build_image_vae(**overrides) -> AutoencoderKL:
    """A freshly initialised image VAE of the default architecture, with ``overrides`` applied."""
    config = {**IMAGE_VAE_CONFIG, **overrides}
    count = len(config["block_out_channels"])
    config["down_block_types"] = ["DownEncoderBlock2D"] * count
    config["up_block_types"] = ["UpDecoderBlock2D"] * count
    return AutoencoderKL(**config)


def load_image_vae(path: str | Path | None = None, dtype: torch.dtype = torch.float32) -> AutoencoderKL:
    """Load an ``AutoencoderKL`` folder (diffusers layout); ``None`` loads the bundled one."""
    from reelkit.loading import load_model

    return load_model(AutoencoderKL, path, "image_vae", dtype).eval()
