import pytest
import torch

from reelkit.errors import ShapeError
from reelkit.vae import compat_decode, image_vae_reconstruct, uniform_sampling_reconstruct
from reelkit.vae.losses import (
    PatchDiscriminator3D,
    adaptive_gan_weight,
    decoder_regularisation,
    hinge_discriminator_loss,
    kl_loss,
    psi,
)


def numbered(frames: int) -> torch.Tensor:
    return torch.arange(float(frames)).view(1, 1, frames, 1, 1).expand(2, 3, frames, 4, 4)


def test_psi_first_slice_average():
    x = numbered(9)
    assert psi(x, "first")[0, 0, :, 0, 0].tolist() == [0, 0, 0]
    assert psi(x, "slice")[0, 0, :, 0, 0].tolist() == [0, 4, 8]
    assert psi(x, "average")[0, 0, :, 0, 0].tolist() == [0, 2.5, 6.5]
    assert psi(numbered(1), "random").shape[2] == 1


def test_psi_random_keeps_frame_0_and_picks_one_frame_from_each_group_of_4():
    x = numbered(13)
    seen = set()
    for seed in range(30):
        picks = psi(x, "random", torch.Generator().manual_seed(seed))[0, 0, :, 0, 0].tolist()
        assert picks[0] == 0
        for group, frame in enumerate(picks[1:]):
            assert 4 * group + 1 <= frame <= 4 * group + 4
        seen.update(picks[1:2])
    assert seen == {1, 2, 3, 4}


def test_psi_refuses_other_frame_counts_and_mappings():
    with pytest.raises(ShapeError):
        psi(numbered(6), "slice")
    with pytest.raises(ValueError):
        psi(numbered(5), "median")


def test_kl_is_zero_for_the_prior_and_positive_otherwise():
    assert kl_loss(torch.zeros(4), torch.zeros(4)).item() == 0
    assert kl_loss(torch.ones(4), torch.zeros(4)).item() > 0


def test_decoder_regularisation_trains_the_encoder_through_the_frozen_image_decoder(image_vae):
    image_vae.requires_grad_(False)
    latents = torch.randn(1, 8, 2, 4, 4, requires_grad=True)
    loss = decoder_regularisation(lambda z: image_vae.decode(z).sample, latents, torch.zeros(1, 3, 2, 32, 32))
    loss.backward()
    assert latents.grad.abs().sum() > 0
    assert all(p.grad is None for p in image_vae.parameters())


def test_discriminator_and_adaptive_weight():
    torch.manual_seed(0)
    disc = PatchDiscriminator3D(channels=8)
    logits = disc(torch.randn(2, 3, 9, 32, 32))
    assert logits.ndim == 5 and logits.shape[0] == 2
    assert hinge_discriminator_loss(torch.full((4,), 2.0), torch.full((4,), -2.0)).item() == 0
    last = torch.randn(4, requires_grad=True)
    weight = adaptive_gan_weight((last * 2).sum(), (last * 0.5).sum(), last)
    assert weight.item() == pytest.approx(4.0, rel=1e-3)


@torch.no_grad()
def test_uniform_sampling_keeps_key_frames_and_blends_linearly_between(image_vae):
    x = torch.rand(3, 9, 32, 32) * 2 - 1
    out = uniform_sampling_reconstruct(image_vae, x)
    keys = image_vae_reconstruct(image_vae, x[:, [0, 4, 8]])
    torch.testing.assert_close(out[:, [0, 4, 8]], keys)
    torch.testing.assert_close(out[:, 2], (keys[:, 0] + keys[:, 1]) / 2)
    torch.testing.assert_close(out[:, 5], 0.75 * keys[:, 1] + 0.25 * keys[:, 2])


@torch.no_grad()
def test_compat_decoding_of_an_inflated_model_equals_the_image_vae_on_key_frames(image_vae, cvvae):
    x = torch.rand(3, 9, 32, 32) * 2 - 1
    torch.testing.assert_close(compat_decode(image_vae, cvvae, x), image_vae_reconstruct(image_vae, x[:, [0, 4, 8]]),
                               atol=1e-5, rtol=1e-5)
