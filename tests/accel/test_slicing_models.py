"""Feature Slicing on diffusers' SVD / AnimateDiff UNets, SVD's temporal VAE decoder and the CV-VAE decoder:
sliced == plain (fp32 round-off), removal restores the plain model, and the activation peak falls."""

import pytest
import torch
from diffusers import AutoencoderKLTemporalDecoder, UNetMotionModel, UNetSpatioTemporalConditionModel
from torch import nn

from reelkit.accel.slicing import (
    SliceRunner,
    SlicingConfig,
    apply_feature_slicing,
    chunk_slices,
    group_norm_apply,
    group_norm_statistics,
    remove_feature_slicing,
)
from reelkit.accel.slicing_models import _full_stats
from reelkit.eval.bench.harness import peak_memory_bytes
from reelkit.vae import CVVAE

FRAMES, BATCH = 5, 2  # odd frame count, CFG batch
CHUNKS = [(3, 3), (5, 2), (2, 5), (64, 64)]  # odd counts, and more chunks than any axis has


pytestmark = pytest.mark.usefixtures("one_thread")


def perturb(model: nn.Module) -> nn.Module:
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():  # zero-initialised outputs and mixers become non-trivial
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return model.eval()


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    if name == "svd":
        return perturb(UNetSpatioTemporalConditionModel(
            sample_size=8, in_channels=8, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
            down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
            up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
            addition_time_embed_dim=8, projection_class_embeddings_input_dim=24, cross_attention_dim=32,
            num_attention_heads=(2, 4), num_frames=FRAMES))
    if name == "animatediff":
        return perturb(UNetMotionModel(
            sample_size=8, block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32,
            down_block_types=("CrossAttnDownBlockMotion", "DownBlockMotion"),
            up_block_types=("UpBlockMotion", "CrossAttnUpBlockMotion"), num_attention_heads=2,
            motion_num_attention_heads=2, motion_max_seq_length=16))
    if name == "svd_vae":
        return perturb(AutoencoderKLTemporalDecoder(block_out_channels=(32, 64), latent_channels=4, layers_per_block=1,
                                                    down_block_types=("DownEncoderBlock2D",) * 2))
    return perturb(CVVAE(block_out_channels=(8, 16, 16, 16), norm_num_groups=4))


def call(name: str, model: nn.Module, size: int):
    """A full forward (or decode) of ``model`` at latent size ``size``, batch 2, 5 frames."""
    if name == "svd":
        ids = torch.tensor([[6.0, 127.0, 0.02]] * BATCH)
        return lambda: model(randn(BATCH, FRAMES, 8, size, size), 10.0, randn(BATCH, 1, 32, seed=1),
                             added_time_ids=ids).sample
    if name == "animatediff":  # pipelines repeat the text embeddings per frame
        text = randn(BATCH, 7, 32, seed=1).repeat_interleave(FRAMES, 0)
        return lambda: model(randn(BATCH, 4, FRAMES, size, size), 10, text).sample
    if name == "svd_vae":
        return lambda: model.decode(randn(BATCH * FRAMES, 4, size, size), num_frames=FRAMES).sample
    return lambda: model.decode(randn(BATCH, 8, 3, size // 2, size // 2)).sample  # 3 latents -> 9 frames


MODELS = ["svd", "animatediff", "svd_vae", "cvvae"]


@pytest.fixture(scope="module")
def models():
    return {name: build(name) for name in MODELS}


# covered blocks: each model's sliced classes must really be hooked
HOOKED = {
    "svd": {"UNetSpatioTemporalConditionModel", "SpatioTemporalResBlock", "TransformerSpatioTemporalModel",
            "UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal", "Downsample2D", "Upsample2D"},
    "animatediff": {"UNetMotionModel", "ResnetBlock2D", "Transformer2DModel", "AnimateDiffTransformer3D",
                    "UpBlockMotion", "CrossAttnUpBlockMotion", "Downsample2D", "Upsample2D"},
    "svd_vae": {"TemporalDecoder"},
    "cvvae": {"Decoder3D", "ResnetBlock3D", "FrameAttention"},
}


def hooked(model: nn.Module) -> set[str]:
    return {type(m).__name__ for m in model.modules()
            if getattr(m, "_diffusers_hook", None) is not None and "reelkit_feature_slicing" in m._diffusers_hook.hooks}


@pytest.mark.parametrize("name", MODELS)
@torch.no_grad()
def test_sliced_model_equals_plain_model(models, name):
    model = models[name]
    run = call(name, model, 8)
    plain = run()
    try:
        for frame_chunks, spatial_chunks in CHUNKS:
            apply_feature_slicing(model, SlicingConfig(frame_chunks=frame_chunks, spatial_chunks=spatial_chunks))
            assert HOOKED[name] <= hooked(model)
            sliced = run()
            remove_feature_slicing(model)
            assert sliced.shape == plain.shape
            assert (sliced - plain).abs().max().item() <= 1e-5, (frame_chunks, spatial_chunks)
    finally:
        remove_feature_slicing(model)
    assert not hooked(model)
    assert torch.equal(run(), plain)


@pytest.mark.parametrize("name", MODELS)
@torch.no_grad()
def test_slicing_lowers_the_activation_peak(models, name):
    model = models[name]
    run = call(name, model, 16)
    plain = peak_memory_bytes(run)
    apply_feature_slicing(model, SlicingConfig(frame_chunks=5, spatial_chunks=4))
    try:
        sliced = peak_memory_bytes(run)
    finally:
        remove_feature_slicing(model)
    assert sliced < 0.85 * plain, (plain, sliced)


@pytest.mark.parametrize("chunks", [1, 3, 5, 100])
def test_group_norm_on_slices_reproduces_the_full_group_norm(chunks):
    torch.manual_seed(0)
    norm = nn.GroupNorm(4, 16, eps=1e-6)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = torch.randn(2, 16, 5, 6, 7) * 3 + 1
    expected = norm(x)
    slices = chunk_slices(x.shape[-1], chunks)
    mean, rstd = group_norm_statistics(norm, x)
    pieces = [group_norm_apply(norm, x[..., s], mean, rstd) for s in slices]
    torch.testing.assert_close(torch.cat(pieces, dim=-1), expected, atol=1e-5, rtol=1e-5)
    # statistics reduced slice by slice (no full-size copy) agree with the full reduction
    runner = SliceRunner(SlicingConfig(frame_chunks=chunks))
    mean2, rstd2 = _full_stats(norm, runner, slices, lambda s: x[..., s], x.device)
    torch.testing.assert_close(mean2, mean, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(rstd2, rstd, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", ["svd", "animatediff"])
@torch.no_grad()
def test_up_block_called_alone_leaves_its_inputs_intact(models, name):
    """Inside a sliced UNet an up block may write over its input (dead after the call); called on its own it
    must not, and it still computes the plain block's output."""
    model = models[name]
    block = model.up_blocks[-1]
    spatial = [r if name == "animatediff" else r.spatial_res_block for r in block.resnets]
    # diffusers: ResNet 0 reads the previous block's output and a skip of the block's width, the others the
    # block's width and a skip of whatever width is left
    skip_channels = [spatial[0].out_channels] + [r.in_channels - r.out_channels for r in spatial[1:]]
    skips = tuple(randn(BATCH * FRAMES, c, 8, 8, seed=2 + i) for i, c in enumerate(reversed(skip_channels)))
    hidden = randn(BATCH * FRAMES, spatial[0].in_channels - skip_channels[0], 8, 8, seed=9)
    temb = randn(BATCH * FRAMES, spatial[0].time_emb_proj.in_features, seed=7)
    if name == "animatediff":
        kwargs = {"encoder_hidden_states": randn(BATCH * FRAMES, 7, 32, seed=1), "num_frames": FRAMES}
    else:
        kwargs = {"encoder_hidden_states": randn(BATCH * FRAMES, 1, 32, seed=1),
                  "image_only_indicator": torch.zeros(BATCH, FRAMES)}
    inputs = (hidden.clone(), tuple(s.clone() for s in skips))
    plain = block(hidden, skips, temb, **kwargs)
    apply_feature_slicing(model, SlicingConfig(frame_chunks=3, spatial_chunks=2))
    try:
        sliced = block(hidden, skips, temb, **kwargs)
    finally:
        remove_feature_slicing(model)
    assert torch.equal(hidden, inputs[0]) and all(torch.equal(a, b) for a, b in zip(skips, inputs[1], strict=True))
    torch.testing.assert_close(sliced, plain, atol=1e-5, rtol=0)


@torch.no_grad()
def test_freeu_up_blocks_run_their_own_forward_and_stay_exact(models):
    model = models["animatediff"]
    run = call("animatediff", model, 8)
    model.enable_freeu(s1=0.9, s2=0.2, b1=1.2, b2=1.4)
    try:
        plain = run()
        apply_feature_slicing(model, SlicingConfig(frame_chunks=3, spatial_chunks=2))
        try:
            sliced = run()
        finally:
            remove_feature_slicing(model)
    finally:
        model.disable_freeu()
    torch.testing.assert_close(sliced, plain, atol=1e-5, rtol=0)
