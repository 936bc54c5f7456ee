import pytest
import torch

from reelkit.vae import CVVAE, build_image_vae

TINY = {"block_out_channels": (8, 16, 16, 16), "norm_num_groups": 4}


def perturb(model: torch.nn.Module, scale: float = 0.05, seed: int = 0) -> torch.nn.Module:
    """Add noise to every weight, so temporal taps are non-zero like a trained model's."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * scale)
    return model


@pytest.fixture
def image_vae():
    torch.manual_seed(0)
    return build_image_vae(**TINY).eval()


@pytest.fixture
def cvvae(image_vae):
    return CVVAE.from_image_vae(image_vae).eval()


@pytest.fixture
def trained_like(cvvae):
    return perturb(cvvae)


@pytest.fixture
def model_dirs(tmp_path_factory, image_vae):
    """A tiny image VAE and CVVAE saved in diffusers layout: (image_vae_dir, cvvae_dir)."""
    root = tmp_path_factory.mktemp("models")
    image_vae.save_pretrained(root / "image_vae")
    perturb(CVVAE.from_image_vae(image_vae), 0.01).save_pretrained(root / "cvvae")
    return root / "image_vae", root / "cvvae"
