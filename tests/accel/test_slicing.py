"""Feature Slicing on the reelkit VideoDiT: exact against the unhooked model, removable, budgeted, and safe
to stack with a cache."""

import pytest
import torch

from reelkit.accel.adacache import AdaCacheConfig, apply_ada_cache, remove_ada_cache
from reelkit.accel.slicing import (
    SliceRunner,
    SlicingConfig,
    SlicingError,
    apply_feature_slicing,
    chunk_slices,
    feature_slicing_chunks,
    parse_bytes,
    remove_feature_slicing,
    slicing_config_from_option,
)
from reelkit.eval.bench.harness import peak_memory_bytes
from reelkit.pipelines.text_to_video import tiny_pipeline

BATCH, FRAMES, SIDE = 2, 5, 8  # a CFG batch, an odd frame count


@pytest.fixture
def model():
    return tiny_pipeline(open_gates=True).transformer.eval()


def inputs(model, seed=0):
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(BATCH, model.config.in_channels, FRAMES, SIDE, SIDE, generator=generator)
    text = torch.randn(BATCH, 6, model.config.text_dim, generator=generator)
    return latents, text


def run(model, latents, text, t=400.0):
    with torch.no_grad():
        return model(latents, t, text).sample


@pytest.mark.parametrize("frame_chunks, spatial_chunks", [(3, 3), (5, 2), (2, 7), (64, 64), (1, 1)])
def test_sliced_output_equals_the_plain_model(model, frame_chunks, spatial_chunks):
    latents, text = inputs(model)
    plain = run(model, latents, text)
    apply_feature_slicing(model, SlicingConfig(frame_chunks, spatial_chunks))
    sliced = run(model, latents, text)
    assert (sliced - plain).abs().max() <= 1e-5
    assert torch.equal(run(model, latents, text), sliced)  # inputs are not consumed: a second call agrees


def test_removal_restores_the_original_model(model):
    latents, text = inputs(model)
    plain = run(model, latents, text)
    apply_feature_slicing(model, SlicingConfig(3))
    run(model, latents, text)
    remove_feature_slicing(model)
    assert torch.equal(run(model, latents, text), plain)
    assert feature_slicing_chunks(model) is None


def test_with_autograd_recording_the_model_runs_unsliced(model):
    latents, text = inputs(model)
    model(latents, 400.0, text).sample.square().mean().backward()
    plain = model.transformer_blocks[0].attn1.to_q.weight.grad.clone()
    model.zero_grad()
    apply_feature_slicing(model, SlicingConfig(3, 2))
    model(latents, 400.0, text).sample.square().mean().backward()
    assert torch.equal(model.transformer_blocks[0].attn1.to_q.weight.grad, plain)


def test_slicing_lowers_the_activation_peak(model):
    latents, text = inputs(model)
    latents = torch.randn(BATCH, model.config.in_channels, 9, 32, 32)
    with torch.no_grad():
        plain = peak_memory_bytes(lambda: model(latents, 400.0, text))
        apply_feature_slicing(model, SlicingConfig(16, 16))
        sliced = peak_memory_bytes(lambda: model(latents, 400.0, text))
    assert sliced < 0.6 * plain


def test_a_budget_picks_more_chunks_when_it_is_tight(model):
    latents, text = inputs(model)
    plain = run(model, latents, text)
    apply_feature_slicing(model, SlicingConfig(max_memory="1GiB"))
    assert torch.equal(run(model, latents, text), plain)
    assert feature_slicing_chunks(model) == (1, 1)
    remove_feature_slicing(model)
    apply_feature_slicing(model, SlicingConfig(max_memory=20_000))
    sliced = run(model, latents, text)
    assert feature_slicing_chunks(model)[0] > 1
    assert (sliced - plain).abs().max() <= 1e-5


def test_stacked_under_adacache_it_changes_nothing_but_memory(model):
    latents, text = inputs(model)

    def generate():
        outputs = []
        for t in torch.linspace(900, 100, 8):
            with model.cache_context("cond"):
                outputs.append(run(model, latents, text, t))
        return torch.stack(outputs)

    apply_ada_cache(model, AdaCacheConfig(codebook={0.5: 3, 10.0: 2}, num_inference_steps=8))
    cached = generate()
    remove_ada_cache(model)
    apply_feature_slicing(model, SlicingConfig(3, 2))
    apply_ada_cache(model, AdaCacheConfig(codebook={0.5: 3, 10.0: 2}, num_inference_steps=8))
    assert (generate() - cached).abs().max() <= 1e-5


def test_pipelined_mode_runs_in_order_on_cpu(model):
    latents, text = inputs(model)
    plain = run(model, latents, text)
    apply_feature_slicing(model, SlicingConfig(3, 3, pipelined=True, max_in_flight=2))
    assert (run(model, latents, text) - plain).abs().max() <= 1e-5


def test_chunk_slices_cover_the_axis_once():
    for size in (1, 5, 17):
        for chunks in (1, 2, 3, 7, 40):
            covered = [i for s in chunk_slices(size, chunks) for i in range(size)[s]]
            assert covered == list(range(size)) and len(chunk_slices(size, chunks)) <= chunks
    calls = []
    SliceRunner(SlicingConfig(2)).run(calls.append, chunk_slices(4, 2), torch.device("cpu"))
    assert calls == [slice(0, 2), slice(2, 4)]


@pytest.mark.parametrize("kwargs, message", [
    ({"frame_chunks": 0}, "frame_chunks must be a positive integer"),
    ({"frame_chunks": 2.5}, "frame_chunks must be a positive integer"),
    ({"spatial_chunks": -1}, "spatial_chunks must be a positive integer"),
    ({"frame_chunks": None}, "give frame_chunks or max_memory"),
    ({"max_memory": "lots"}, "is not a memory size"),
    ({"max_memory": 0}, "must be positive"),
])
def test_bad_configs_are_refused(kwargs, message):
    with pytest.raises(SlicingError, match=message):
        SlicingConfig(**kwargs)


def test_bad_models_and_double_application_are_refused(model):
    with pytest.raises(SlicingError, match="knows no block of Linear"):
        apply_feature_slicing(torch.nn.Linear(2, 2), SlicingConfig(2))
    apply_feature_slicing(model, SlicingConfig(2))
    with pytest.raises(SlicingError, match="sliced already"):
        apply_feature_slicing(model, SlicingConfig(2))


def test_the_cli_option_reads_counts_budgets_and_auto():
    assert parse_bytes("1.5GiB") == int(1.5 * 2**30) and parse_bytes("800MB") == 800 * 10**6
    assert slicing_config_from_option(None) is None
    assert slicing_config_from_option("6").chunks == (6, 6)
    assert slicing_config_from_option("2GiB").max_memory == 2 * 2**30
    assert slicing_config_from_option("auto").max_memory > 0
    with pytest.raises(SlicingError, match="give a chunk count"):
        slicing_config_from_option("lots")
    with pytest.raises(SlicingError, match="at least 1 chunk"):
        slicing_config_from_option("0")


def test_a_hook_inside_a_block_still_sees_the_whole_feature(model):
    from reelkit.accel._diffusers_compat import ModelHook, register_hook

    seen = []

    class Record(ModelHook):
        def post_forward(self, module, output):
            seen.append(tuple(output.shape))
            return output

    latents, text = inputs(model)
    register_hook(model.transformer_blocks[0].attn_temporal, Record(), "record")
    plain = run(model, latents, text)
    apply_feature_slicing(model, SlicingConfig(3, 3))
    assert (run(model, latents, text) - plain).abs().max() <= 1e-5
    assert seen[0] == seen[1] == (BATCH * SIDE * SIDE // 4, FRAMES, seen[0][2])  # (B*S, T, C) both times


def test_a_subclass_of_a_sliced_block_is_not_sliced_as_its_parent():
    """MarDini's generator block is a VideoDiTBlock with another forward: the VideoDiT slicer must not run on
    it. Slicing a MarDini generator is refused with the fix, and the model computes as before."""
    from reelkit.mardini.generator import MarDiniGenerator, MarDiniGeneratorBlock
    from reelkit.models.dit import VideoDiTBlock

    assert issubclass(MarDiniGeneratorBlock, VideoDiTBlock)
    model = MarDiniGenerator(num_layers=1, num_attention_heads=2, attention_head_dim=8, plan_dim=16, sample_size=4)
    with pytest.raises(SlicingError, match="knows no block of MarDiniGenerator.*register_slicer"):
        apply_feature_slicing(model)
    assert getattr(model, "_feature_slicing", None) is None
