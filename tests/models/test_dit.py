import pytest
import torch
from diffusers.hooks import FirstBlockCacheConfig, MagCacheConfig, PyramidAttentionBroadcastConfig
from diffusers.hooks._helpers import TransformerBlockRegistry

from reelkit.errors import ShapeError
from reelkit.models.dit import VideoDiT, VideoDiTBlock


def tiny_dit(**overrides) -> VideoDiT:
    torch.manual_seed(0)
    options = dict(num_layers=2, num_attention_heads=2, attention_head_dim=8, text_dim=12, sample_size=4)
    model = VideoDiT(**{**options, **overrides}).eval()
    for parameter in model.parameters():  # leave adaLN-zero's closed gates: outputs must depend on inputs
        parameter.data.add_(0.05 * torch.randn_like(parameter))
    return model


def inputs(batch=2, frames=3, side=4):
    generator = torch.Generator().manual_seed(1)
    return (torch.randn(batch, 8, frames, side, side, generator=generator), torch.tensor([100.0, 700.0][:batch]),
            torch.randn(batch, 5, 12, generator=generator))


def test_output_matches_input_layout_for_any_frame_count_and_rectangle():
    model = tiny_dit()
    for shape in [(1, 8, 1, 4, 4), (2, 8, 5, 4, 6), (1, 8, 3, 8, 2)]:
        latents = torch.randn(shape)
        out = model(latents, torch.full((shape[0],), 500.0), torch.randn(shape[0], 5, 12)).sample
        assert out.shape == latents.shape and torch.isfinite(out).all()


def test_zero_initialised_model_predicts_zero():
    model = VideoDiT(num_layers=1, num_attention_heads=2, attention_head_dim=8, text_dim=12)
    assert model(*inputs()).sample.abs().max() == 0


def test_text_and_timestep_change_the_prediction():
    model = tiny_dit()
    latents, t, text = inputs()
    base = model(latents, t, text).sample
    assert not torch.allclose(base, model(latents, t, text + 1).sample)
    assert not torch.allclose(base, model(latents, t * 0.5, text).sample)


def test_temporal_attention_carries_information_across_frames():
    model = tiny_dit()
    latents, t, text = inputs(batch=1, frames=3)
    base = model(latents, t[:1], text[:1]).sample
    changed = latents.clone()
    changed[:, :, 2, 0, 0] += 5.0  # one location of the last frame
    delta = (model(changed, t[:1], text[:1]).sample - base).abs()
    assert delta[:, :, 0].sum() > 0  # temporal attention carries it to frame 0


def test_blocks_keep_one_token_layout_and_are_registered_for_diffusers_caches():
    block = tiny_dit().transformer_blocks[0]
    x = torch.randn(2, 3 * 4, 16)  # (B, T*S, C)
    out = block(x, torch.randn(2, 5, 12), torch.randn(2, 12 * 16), num_frames=3)
    assert out.shape == x.shape
    assert TransformerBlockRegistry.get(VideoDiTBlock).return_hidden_states_index == 0


@pytest.mark.parametrize("config", [
    FirstBlockCacheConfig(threshold=0.05),
    PyramidAttentionBroadcastConfig(spatial_attention_block_skip_range=2,
                                    spatial_attention_timestep_skip_range=(-1, 1001),
                                    current_timestep_callback=lambda: 500),
    MagCacheConfig(num_inference_steps=4, mag_ratios=[1.0] * 4),
], ids=["firstblockcache", "pab", "magcache"])
def test_diffusers_caches_run_on_it(config):
    model = tiny_dit()
    latents, t, text = inputs()
    reference = model(latents, t, text).sample
    model.enable_cache(config)
    for step in range(4):
        with model.cache_context("cond", step_index=step, num_inference_steps=4):
            out = model(latents, t, text).sample
        assert out.shape == reference.shape and torch.isfinite(out).all()
    model.disable_cache()
    torch.testing.assert_close(model(latents, t, text).sample, reference)


def test_gradient_checkpointing_gives_the_same_gradients():
    model = tiny_dit().train()
    latents, t, text = inputs()
    model(latents, t, text).sample.square().mean().backward()
    reference = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.enable_gradient_checkpointing()
    model(latents, t, text).sample.square().mean().backward()
    for expected, parameter in zip(reference, model.parameters(), strict=True):
        torch.testing.assert_close(parameter.grad, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_is_finite_and_close(dtype):
    model = tiny_dit()
    latents, t, text = inputs()
    reference = model(latents, t, text).sample
    out = model.to(dtype)(latents.to(dtype), t, text.to(dtype)).sample.float()
    assert torch.isfinite(out).all()
    assert (out - reference).abs().max() < 0.1 * reference.abs().max() + 0.05


def test_wrong_channels_or_odd_sides_are_a_shape_error():
    model = tiny_dit()
    with pytest.raises(ShapeError, match="8 channels"):
        model(torch.randn(1, 4, 3, 4, 4), 1.0, torch.randn(1, 5, 12))
    with pytest.raises(ShapeError, match="divisible by 2"):
        model(torch.randn(1, 8, 3, 5, 4), 1.0, torch.randn(1, 5, 12))


def test_save_and_load_round_trip(tmp_path):
    model = tiny_dit()
    model.save_pretrained(tmp_path / "dit")
    loaded = VideoDiT.from_pretrained(tmp_path / "dit").eval()
    latents, t, text = inputs()
    torch.testing.assert_close(loaded(latents, t, text).sample, model(latents, t, text).sample)


@torch.no_grad()
def test_the_convolutional_refiner_keeps_feature_slicing_exact():
    from reelkit.accel.slicing import SlicingConfig, apply_feature_slicing, remove_feature_slicing

    torch.manual_seed(0)
    model = VideoDiT(num_layers=2, num_attention_heads=2, attention_head_dim=8, text_dim=16, refine_channels=4).eval()
    for parameter in model.refine.parameters():
        parameter.normal_(std=0.1)
    latents, text = torch.randn(2, 8, 3, 8, 8), torch.randn(2, 5, 16)
    plain = model(latents, 400.0, text).sample
    apply_feature_slicing(model, SlicingConfig(frame_chunks=3, spatial_chunks=2))
    try:
        sliced = model(latents, 400.0, text).sample
    finally:
        remove_feature_slicing(model)
    torch.testing.assert_close(sliced, plain, atol=1e-5, rtol=0)
