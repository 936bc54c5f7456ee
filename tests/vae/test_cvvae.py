import json

import pytest
import torch

from reelkit.errors import ReelkitError, ShapeError
from reelkit.vae import CVVAE, load_cvvae


def video(frames: int, size: int = 32, batch: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, frames, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@torch.no_grad()
def test_inflated_model_encodes_and_decodes_one_frame_exactly_like_the_image_vae(image_vae, cvvae):
    x = video(1, batch=2)
    z = cvvae.encode(x).latent_dist
    z_image = image_vae.encode(x[:, :, 0]).latent_dist
    torch.testing.assert_close(z.mean[:, :, 0], z_image.mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(z.logvar[:, :, 0], z_image.logvar, atol=1e-5, rtol=1e-5)
    decoded = cvvae.decode(z.mode()).sample[:, :, 0]
    torch.testing.assert_close(decoded, image_vae.decode(z_image.mode()).sample, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_an_image_tensor_is_treated_as_one_frame(cvvae):
    x = video(1)
    torch.testing.assert_close(cvvae.encode(x[:, :, 0]).latent_dist.mean, cvvae.encode(x).latent_dist.mean)


@torch.no_grad()
def test_inflated_model_encodes_a_clip_like_the_image_vae_on_every_fourth_frame(image_vae, cvvae):
    x = video(9)
    z = cvvae.encode(x).latent_dist.mode()
    keys = x[:, :, [0, 4, 8]].transpose(1, 2).flatten(0, 1)
    expected = image_vae.encode(keys).latent_dist.mode().unflatten(0, (1, 3)).transpose(1, 2)
    torch.testing.assert_close(z, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("frames", [1, 5, 9, 17])
@torch.no_grad()
def test_frame_arithmetic_1_plus_4k_to_1_plus_k_and_back(trained_like, frames):
    z = trained_like.encode(video(frames)).latent_dist.sample()
    assert z.shape == (1, 8, 1 + (frames - 1) // 4, 4, 4)
    assert trained_like.decode(z).sample.shape == (1, 3, frames, 32, 32)
    assert trained_like.decode(z, image_mode=True).sample.shape == (1, 3, z.shape[2], 32, 32)


@torch.no_grad()
def test_encoder_is_causal_so_the_first_latent_is_a_pure_image_latent(trained_like):
    x = video(9)
    later_changed = x.clone()
    later_changed[:, :, 1:] = video(8, seed=5)
    z, z_changed = (trained_like.encode(v).latent_dist.mean for v in (x, later_changed))
    torch.testing.assert_close(z[:, :, 0], z_changed[:, :, 0])
    torch.testing.assert_close(z[:, :, 0], trained_like.encode(x[:, :, :1]).latent_dist.mean[:, :, 0])
    assert not torch.allclose(z[:, :, 1:], z_changed[:, :, 1:])
    changed_frame_5 = x.clone()
    changed_frame_5[:, :, 5] += 0.5  # frame 5 sits in the third latent's group; the second must not move
    z5 = trained_like.encode(changed_frame_5).latent_dist.mean
    torch.testing.assert_close(z[:, :, :2], z5[:, :, :2])


def test_half_3d_blocks_have_one_3d_and_one_2d_conv(image_vae):
    half = CVVAE.from_image_vae(image_vae)
    full = CVVAE.from_image_vae(image_vae, half_3d=False)
    block = half.encoder.down_blocks[0].resnets[0]
    assert block.conv1.weight.ndim == 5 and block.conv2.weight.ndim == 4
    assert full.encoder.down_blocks[0].resnets[0].conv2.weight.ndim == 5
    assert sum(p.numel() for p in half.parameters()) < sum(p.numel() for p in full.parameters())


@pytest.mark.parametrize("frames", [2, 8, 10])
def test_frame_counts_other_than_1_plus_4k_are_refused_by_the_model(cvvae, frames):
    with pytest.raises(ShapeError, match="1\\+4k"):
        cvvae.encode(video(frames))


def test_bad_sizes_and_latent_channels_are_refused(cvvae):
    with pytest.raises(ShapeError, match="multiples of 8"):
        cvvae.encode(torch.zeros(1, 3, 1, 30, 32))
    with pytest.raises(ShapeError, match="latents"):
        cvvae.decode(torch.zeros(1, 4, 2, 4, 4))


def test_save_and_load_round_trip(trained_like, tmp_path):
    trained_like.save_pretrained(tmp_path / "cvvae")
    loaded = load_cvvae(tmp_path / "cvvae")
    x = video(5)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode(x).latent_dist.mean, trained_like.encode(x).latent_dist.mean)


def test_loading_the_wrong_checkpoint_is_a_clear_error(image_vae, cvvae, tmp_path):
    image_vae.save_pretrained(tmp_path / "image")
    with pytest.raises(ReelkitError, match="AutoencoderKL checkpoint, not a CVVAE"):
        load_cvvae(tmp_path / "image")
    with pytest.raises(ReelkitError, match="no config.json"):
        load_cvvae(tmp_path / "nothing")
    cvvae.save_pretrained(tmp_path / "mismatch")
    config = json.loads((tmp_path / "mismatch" / "config.json").read_text())
    config["block_out_channels"] = [16, 16, 16, 16]
    (tmp_path / "mismatch" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ReelkitError, match="does not match"):
        load_cvvae(tmp_path / "mismatch")
    (tmp_path / "mismatch" / "config.json").write_text("{not json")
    with pytest.raises(ReelkitError, match="corrupt"):
        load_cvvae(tmp_path / "mismatch")


def test_an_image_vae_of_another_layout_cannot_be_inflated(image_vae):
    with pytest.raises(ReelkitError, match="unknown CVVAE options"):
        CVVAE.from_image_vae(image_vae, attention=False)
    with pytest.raises(ValueError, match="temporal"):
        CVVAE.from_image_vae(image_vae, temporal_downsample_levels=(0,))


def test_gradients_reach_every_temporal_tap(trained_like):
    out = trained_like(video(5), sample_posterior=True, generator=torch.Generator().manual_seed(0)).sample
    out.mean().backward()
    conv = trained_like.encoder.down_blocks[0].resnets[0].conv1
    assert conv.weight.grad is not None and (conv.weight.grad[:, :, :2].abs().sum() > 0)
