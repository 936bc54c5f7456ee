import pytest
import torch

from reelkit.errors import ReelkitError
from reelkit.vae.chunking import ChunkingConfig, blend_tiles, plan_chunking


def clip(frames: int, size: int = 32) -> torch.Tensor:
    return torch.rand(1, 3, frames, size, size, generator=torch.Generator().manual_seed(1)) * 2 - 1


@torch.no_grad()
def test_one_chunk_covering_the_clip_reproduces_the_unchunked_model(trained_like):
    x = clip(17)
    z = trained_like.encode(x).latent_dist.mean
    out = trained_like.decode(z).sample
    trained_like.enable_chunking(frames_per_chunk=16)
    torch.testing.assert_close(trained_like.encode(x).latent_dist.mean, z)
    torch.testing.assert_close(trained_like.decode(z).sample, out)
    trained_like.disable_chunking()
    assert trained_like.chunking is None


@torch.no_grad()
def test_temporal_chunks_give_the_same_shapes_and_a_close_result(trained_like):
    x = clip(33)
    z = trained_like.encode(x).latent_dist.mean
    out = trained_like.decode(z).sample
    trained_like.enable_chunking(frames_per_chunk=8)
    z_chunked = trained_like.encode(x).latent_dist.mean
    out_chunked = trained_like.decode(z).sample
    assert z_chunked.shape == z.shape and out_chunked.shape == out.shape
    torch.testing.assert_close(z_chunked[:, :, :3], z[:, :, :3])  # the causal encoder's first chunk is exact
    assert torch.isfinite(out_chunked).all()
    # how close the rest comes is a property of trained weights: the vae bench reports it


@torch.no_grad()
def test_spatial_tiles_cover_the_frame_and_blend(trained_like):
    x = clip(5, size=64)
    z = trained_like.encode(x).latent_dist.mean
    out = trained_like.decode(z).sample
    trained_like.enable_chunking(frames_per_chunk=16, tile_size=32, tile_overlap=0.25)
    z_tiled = trained_like.encode(x).latent_dist.mean
    out_tiled = trained_like.decode(z).sample
    assert z_tiled.shape == z.shape and out_tiled.shape == out.shape
    assert torch.isfinite(out_tiled).all()


def test_blending_is_exact_for_pointwise_functions_and_any_overlap():
    x = torch.randn(1, 2, 3, 40, 56)
    for overlap in (0.0, 0.1, 0.25, 0.4):
        torch.testing.assert_close(blend_tiles(lambda t: t * 3 - 1, x, tile=16, overlap=overlap), x * 3 - 1)
    up = blend_tiles(lambda t: t.repeat_interleave(2, -1).repeat_interleave(2, -2), x, tile=16, overlap=0.25,
                     scale=2)
    torch.testing.assert_close(up, x.repeat_interleave(2, -1).repeat_interleave(2, -2))


@pytest.mark.parametrize("kwargs", [{"frames_per_chunk": 6}, {"frames_per_chunk": 0}, {"tile_size": 20},
                                    {"tile_overlap": 0.5}])
def test_bad_chunking_settings_are_refused(kwargs):
    with pytest.raises(ReelkitError):
        ChunkingConfig(**kwargs)


def test_a_smaller_memory_budget_never_plans_bigger_pieces(cvvae):
    plans = [plan_chunking(cvvae, budget) for budget in (2**34, 2**30, 2**27, 2**24)]
    frames = [p.frames_per_chunk for p in plans]
    tiles = [p.tile_size or 10**6 for p in plans]
    assert frames == sorted(frames, reverse=True) and tiles == sorted(tiles, reverse=True)
    assert plans[0].tile_size is None and plans[-1].tile_size is not None
    cvvae.enable_chunking(max_memory=2**27)
    assert cvvae.chunking == plans[2]
