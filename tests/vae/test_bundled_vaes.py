"""End-to-end checks of the bundled checkpoints (src/reelkit/assets/{image_vae,cvvae})."""

import torch

from reelkit.data.datasets import heldout_seeds
from reelkit.data.world import render_clip
from reelkit.eval.metrics import video_psnr
from reelkit.paths import bundled_models
from reelkit.vae import compat_decode, image_vae_reconstruct, load_cvvae, load_image_vae, reconstruct
from reelkit.vae.losses import psi

# floors a few dB under the measured figures (docs/bench/vae.json), so a broken checkpoint fails
CVVAE_WORLD_PSNR = 21.0  # measured 23.7 (CV-VAE), 24.2 (image VAE), 23.8 (one image)
COMPAT_WORLD_PSNR = 21.0  # measured 23.8


def test_both_vaes_are_bundled_and_listed():
    assert {"image_vae", "cvvae"} <= set(bundled_models())


def test_bundled_cvvae_reconstructs_a_heldout_clip_and_the_image_vae_reads_its_latents():
    vae, image_vae = load_cvvae(), load_image_vae()
    assert vae.config.scaling_factor == image_vae.config.scaling_factor
    clip = render_clip(heldout_seeds(1)[0], num_frames=17, size=64).video
    output = reconstruct(vae, clip)
    assert output.shape == clip.shape
    assert video_psnr(output, clip) > CVVAE_WORLD_PSNR
    assert video_psnr(compat_decode(image_vae, vae, clip), psi(clip[None], "slice")[0]) > COMPAT_WORLD_PSNR
    assert video_psnr(image_vae_reconstruct(image_vae, clip), clip) > CVVAE_WORLD_PSNR


def test_bundled_cvvae_still_encodes_an_image():
    vae = load_cvvae()
    image = render_clip(heldout_seeds(2)[1], num_frames=1, size=64).video  # (3, 1, 64, 64)
    with torch.no_grad():
        z = vae.encode(image[None, :, 0]).latent_dist.mode()
        decoded = vae.decode(z).sample[0].clamp(-1, 1)
    assert z.shape == (1, 8, 1, 8, 8)
    assert video_psnr(decoded, image) > CVVAE_WORLD_PSNR
