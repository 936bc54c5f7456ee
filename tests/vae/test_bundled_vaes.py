"""End-to-end checks of the bundled checkpoints (src/reelkit/assets/{image_vae,cvvae})."""

import torch

from reelkit.data.datasets import heldout_seeds
from reelkit.data.world import render_clip
from reelkit.metrics import video_psnr
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


# the rebuilt pair (image_vae_f4, cvvae_f4): floors under the measured figures of docs/bench/vae.json
REBUILT_WORLD_PSNR = 30.0  # measured 37.7 (image VAE, 96 held-out 17x64 clips)
REBUILT_CVVAE_WORLD_PSNR = 28.0  # measured 33.4 (CV-VAE, same clips); compat 31.6 on 8 of them


def test_the_rebuilt_image_vae_keeps_what_the_judge_reads():
    """The ceiling of every model trained in the rebuilt space: the judge reads its round trips as the clips."""
    from reelkit.eval.ceiling import ceiling_figures, roundtrip_reading
    from reelkit.models.judge import load_judge
    from reelkit.vae.ops import roundtrip_fn

    image_vae = load_image_vae("image_vae_f4")
    assert image_vae.config.block_out_channels == [32, 64, 128] and image_vae.config.latent_channels == 8
    clips = [render_clip(seed, 17, 64) for seed in heldout_seeds(8)]
    figures = ceiling_figures(roundtrip_reading(load_judge(), roundtrip_fn(image_vae), clips), clips)
    assert figures["psnr_db"] > REBUILT_WORLD_PSNR
    for attribute in ("shape", "color", "motion", "count"):
        assert figures[f"judge_{attribute}"] >= 0.85, figures


def test_the_rebuilt_cvvae_compresses_4x_in_time_and_its_image_decoder_reads_the_latents():
    from reelkit.models.judge import load_judge

    vae, image_vae = load_cvvae("cvvae_f4"), load_image_vae("image_vae_f4")
    assert vae.config.scaling_factor == image_vae.config.scaling_factor
    clip = render_clip(heldout_seeds(3)[2], num_frames=17, size=64).video
    with torch.no_grad():
        z = vae.encode(clip[None]).latent_dist.mode()
    assert z.shape == (1, 8, 5, 16, 16)
    output = reconstruct(vae, clip)
    assert video_psnr(output, clip) > REBUILT_CVVAE_WORLD_PSNR
    assert video_psnr(compat_decode(image_vae, vae, clip), psi(clip[None], "slice")[0]) > REBUILT_CVVAE_WORLD_PSNR
    from reelkit.eval.adherence import judge_clips

    truth = render_clip(heldout_seeds(3)[2], 17, 64).labels["objects"]
    seen = judge_clips(load_judge(), output[None])[0][0]
    assert [o["shape"] for o in seen] == [o["shape"] for o in truth]
