"""AdaCache on diffusers' video transformers, each on a tiny randomly initialised config on the CPU.

Every model gets the same checks: a codebook that never reuses changes nothing and removal restores the
model, a reusing one really skips the transformer blocks, steps counted without a step index (no
``cache_context``, or a bare one as most pipelines open) restart cleanly between generations, per-video
schedules give each video of a batch the output it would get alone, and motion regularisation finds the
frames of the model's token layout. Pipeline quirks are covered too: Mochi's rising timesteps, LTX's
coordinates instead of a frame count, and CFG branches with schedules of their own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import diffusers
import pytest
import torch
from diffusers.hooks import FirstBlockCacheConfig, PyramidAttentionBroadcastConfig
from torch import nn

from reelkit.accel._diffusers_compat import hook_names
from reelkit.accel.adacache import (
    AdaCacheConfig,
    AdaCacheError,
    ada_cache_stats,
    apply_ada_cache,
    cached_blocks,
    record_metric_trace,
    remove_ada_cache,
)

pytestmark = pytest.mark.filterwarnings("ignore:In CPU autocast:UserWarning")  # Mochi's rotary embedding

Call = Callable[[nn.Module, torch.Tensor], torch.Tensor]

TIMESTEPS = torch.linspace(900, 100, 6)
NEVER_REUSE = {1e9: 1}


# ------------------------------------------------------------------------------------------------ tiny models


def _noisy(model: nn.Module) -> nn.Module:
    """Nudge every weight so zero-initialised gates or projections cannot hide a block's residual."""
    for parameter in model.parameters():
        parameter.data.add_(0.05 * torch.randn_like(parameter))
    return model.eval()


def _randn(videos: tuple[int, ...], key: int, *shape: int) -> torch.Tensor:
    """A batch of inputs: video ``v`` always gets the same values, whichever batch it is in."""
    return torch.cat([torch.randn(1, *shape, generator=torch.Generator().manual_seed(100 * video + key))
                      for video in videos])


def _timesteps(t: torch.Tensor, batch: int) -> torch.Tensor:
    """A scalar timestep for every video, or one per video."""
    return torch.as_tensor(t, dtype=torch.float32).reshape(-1).expand(batch)


def latte(videos: tuple[int, ...] = (0,), side: int = 8, frames: int = 3) -> tuple[nn.Module, Call]:
    torch.manual_seed(0)
    model = _noisy(diffusers.LatteTransformer3DModel(
        sample_size=side, num_layers=2, patch_size=2, attention_head_dim=8, num_attention_heads=2, caption_channels=8,
        in_channels=4, cross_attention_dim=16, out_channels=4, attention_bias=True, activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000, norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6,
        video_length=frames))
    batch = len(videos)
    latents, text = _randn(videos, 1, 4, frames, side, side), _randn(videos, 2, 5, 8)
    return model, lambda m, t: m(latents, timestep=_timesteps(t, batch), encoder_hidden_states=text).sample


def cogvideox(videos: tuple[int, ...] = (0,), patch_size_t: int | None = None) -> tuple[nn.Module, Call]:
    """CogVideoX 1.0 (frames patched one by one), or 1.5 with ``patch_size_t=2`` (two frames a token)."""
    torch.manual_seed(0)
    frames = 3 if patch_size_t is None else 4
    model = _noisy(diffusers.CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4, time_embed_dim=4,
        text_embed_dim=8, num_layers=2, sample_width=8, sample_height=8, sample_frames=4 * frames - 3, patch_size=2,
        patch_size_t=patch_size_t, temporal_compression_ratio=4, max_text_seq_length=6,
        use_rotary_positional_embeddings=patch_size_t is not None, patch_bias=patch_size_t is None))
    batch = len(videos)
    latents, text = _randn(videos, 1, frames, 4, 8, 8), _randn(videos, 2, 6, 8)  # (B, T, C, H, W)
    return model, lambda m, t: m(latents, text, _timesteps(t, batch), image_rotary_emb=None).sample


def wan(videos: tuple[int, ...] = (0,)) -> tuple[nn.Module, Call]:
    torch.manual_seed(0)
    model = _noisy(diffusers.WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4,
        text_dim=8, freq_dim=16, ffn_dim=16, num_layers=2, rope_max_seq_len=32))
    batch = len(videos)
    latents, text = _randn(videos, 1, 4, 3, 8, 8), _randn(videos, 2, 6, 8)
    return model, lambda m, t: m(latents, _timesteps(t, batch), text).sample


def hunyuan_video(videos: tuple[int, ...] = (0,)) -> tuple[nn.Module, Call]:
    torch.manual_seed(0)
    model = _noisy(diffusers.HunyuanVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=10, num_layers=2,
        num_single_layers=2, num_refiner_layers=1, patch_size=2, patch_size_t=1, guidance_embeds=True,
        text_embed_dim=8, pooled_projection_dim=8, rope_axes_dim=(2, 4, 4)))
    batch = len(videos)
    latents, text, pooled = _randn(videos, 1, 4, 3, 8, 8), _randn(videos, 2, 6, 8), _randn(videos, 3, 8)
    mask, guidance = torch.ones(batch, 6), torch.full((batch,), 3000.0)
    return model, lambda m, t: m(latents, _timesteps(t, batch), text, mask, pooled, guidance=guidance).sample


def ltx_video(videos: tuple[int, ...] = (0,), coordinates: bool = False) -> tuple[nn.Module, Call]:
    """Positions from ``num_frames, height, width`` (LTXPipeline) or from ``video_coords`` (LTXConditionPipeline)."""
    torch.manual_seed(0)
    model = _noisy(diffusers.LTXVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, cross_attention_dim=16,
        num_layers=2, caption_channels=8))
    batch = len(videos)
    frames, height, width = 3, 4, 4
    latents, text = _randn(videos, 1, frames * height * width, 4), _randn(videos, 2, 6, 8)
    mask = torch.ones(batch, 6)
    if coordinates:
        grid = torch.meshgrid(*(torch.arange(float(n)) for n in (frames, height, width)), indexing="ij")
        video_coords = torch.stack(grid).flatten(1).expand(batch, 3, -1)
        return model, lambda m, t: m(latents, text, _timesteps(t, batch), mask, video_coords=video_coords).sample
    return model, lambda m, t: m(latents, text, _timesteps(t, batch), mask, num_frames=frames, height=height,
                                 width=width, rope_interpolation_scale=(1.0, 1.0, 1.0)).sample


def mochi(videos: tuple[int, ...] = (0,)) -> tuple[nn.Module, Call]:
    torch.manual_seed(0)
    model = _noisy(diffusers.MochiTransformer3DModel(
        patch_size=2, num_attention_heads=2, attention_head_dim=8, num_layers=2, pooled_projection_dim=8,
        in_channels=4, text_embed_dim=8, time_embed_dim=4, max_sequence_length=6))
    batch = len(videos)
    latents, text, mask = _randn(videos, 1, 4, 3, 8, 8), _randn(videos, 2, 6, 8), torch.ones(batch, 6)
    return model, lambda m, t: m(latents, text, _timesteps(t, batch), mask).sample


MODELS = pytest.mark.parametrize("factory", [latte, cogvideox, wan, hunyuan_video, ltx_video, mochi],
                                 ids=lambda factory: factory.__name__)


# ------------------------------------------------------------------------------------------------ helpers


@torch.no_grad()
def denoise(model: nn.Module, call: Call, timesteps=TIMESTEPS, context: str | None = "cond",
            step_index: bool = True) -> list[torch.Tensor]:
    """One output per step, inside ``cache_context(context, step_index=i, num_inference_steps=n)``; with
    ``step_index=False`` inside a bare ``cache_context(context)`` as most diffusers pipelines do; with
    ``context=None`` outside any context."""
    outputs = []
    for step, t in enumerate(timesteps):
        if context is None:
            outputs.append(call(model, t))
            continue
        position = dict(step_index=step, num_inference_steps=len(timesteps)) if step_index else {}
        with model.cache_context(context, **position):
            outputs.append(call(model, t))
    return outputs


def all_equal(first: list[torch.Tensor], second: list[torch.Tensor]) -> bool:
    return len(first) == len(second) and all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


def ada_cache_hooks(model: nn.Module) -> set[str]:
    return {name for name in hook_names(model) if name.startswith("ada_cache")}


def attention_of(block: nn.Module) -> nn.Module:
    """The block's (first) attention: it runs exactly when the block's own forward runs."""
    return next(module for name, module in block.named_children() if name in ("attn1", "attn"))


class CallCounter:
    """Counts the forwards of some submodules through torch pre-hooks (which the AdaCache hooks do not bypass)."""

    def __init__(self, modules: list[nn.Module]):
        self.count = 0
        self.handles = [module.register_forward_pre_hook(self._count) for module in modules]

    def _count(self, module, args):
        self.count += 1

    def remove(self):
        for handle in self.handles:
            handle.remove()


# ------------------------------------------------------------------------------------------------ every model


@MODELS
def test_never_reusing_codebook_is_bit_identical_and_removal_restores_the_model(factory):
    model, call = factory()
    reference = denoise(model, call)

    apply_ada_cache(model, AdaCacheConfig(codebook=NEVER_REUSE))
    assert ada_cache_hooks(model)
    assert all_equal(denoise(model, call), reference)
    stats = ada_cache_stats(model)["cond"]
    assert stats.computed == (len(TIMESTEPS),) and stats.reused == (0,)

    remove_ada_cache(model)
    assert not ada_cache_hooks(model)
    assert all_equal(denoise(model, call), reference)
    assert all_equal(denoise(model, call, context=None), reference)


@MODELS
def test_reused_steps_skip_every_cached_block(factory):
    model, call = factory()
    timesteps = torch.linspace(900, 100, 8)
    reference = denoise(model, call, timesteps)
    apply_ada_cache(model, AdaCacheConfig(codebook={1e9: 4}, compute_first=1, compute_last=1))
    blocks = cached_blocks(model)
    first, every = CallCounter([attention_of(next(iter(blocks.values())))]), CallCounter(
        [attention_of(block) for block in blocks.values()])

    outputs, first_calls, every_calls = [], [], []
    with torch.no_grad():
        for step, t in enumerate(timesteps):
            before_first, before_every = first.count, every.count
            with model.cache_context("cond", step_index=step, num_inference_steps=len(timesteps)):
                outputs.append(call(model, t))
            first_calls.append(first.count - before_first)
            every_calls.append(every.count - before_every)
    first.remove()
    every.remove()

    stats = ada_cache_stats(model)["cond"]
    computed = stats.computed_steps[0]
    assert stats.reused[0] > 0 and stats.computed[0] + stats.reused[0] == len(timesteps)
    assert computed[0] == 0 and computed[-1] == len(timesteps) - 1  # compute_first, compute_last
    assert all(b - a <= 4 for a, b in zip(computed, computed[1:], strict=False))  # never longer than the codebook
    assert [step for step, calls in enumerate(first_calls) if calls] == list(computed)
    assert [step for step, calls in enumerate(every_calls) if calls] == list(computed)
    assert all(calls == len(blocks) for calls in every_calls if calls)
    first_reuse = min(set(range(len(timesteps))) - set(computed))
    for step, (output, expected) in enumerate(zip(outputs, reference, strict=True)):
        assert output.shape == expected.shape and torch.isfinite(output).all()
        if step < first_reuse:  # nothing cached has been used yet
            assert torch.equal(output, expected)
        elif step not in computed:  # the cached residual of an earlier timestep stands in for this one
            assert not torch.equal(output, expected)


@MODELS
@pytest.mark.parametrize("context", [None, "cond_uncond"], ids=["no_context", "context_without_step"])
def test_counted_steps_restart_cleanly_between_generations(factory, context):
    # the step count comes from the config; the step is counted per call, a new generation starts when the
    # timestep rises again
    model, call = factory()
    apply_ada_cache(model, AdaCacheConfig(codebook={1e9: 3}, compute_first=1, compute_last=1,
                                          num_inference_steps=len(TIMESTEPS)))
    first = denoise(model, call, context=context, step_index=False)
    first_stats = ada_cache_stats(model)
    assert set(first_stats) == {context or "ada_cache"}
    assert next(iter(first_stats.values())).reused[0] > 0

    assert all_equal(denoise(model, call, context=context, step_index=False), first)
    assert ada_cache_stats(model) == first_stats

    denoise(model, call, TIMESTEPS[:3], context=context, step_index=False)  # an interrupted generation...
    assert all_equal(denoise(model, call, context=context, step_index=False), first)  # ...does not leak
    assert ada_cache_stats(model) == first_stats


@MODELS
def test_each_video_of_a_batch_gets_its_own_schedule_and_its_own_output(factory):
    # video 0 follows a real schedule (changes of 0.04 and more per step: computes every step); video 1's
    # timestep barely moves (changes of 0.002 and less: reuses for 4 steps). Together, each gets its solo output.
    steady = 500 - 0.01 * torch.arange(float(len(TIMESTEPS)))
    config = dict(codebook={1e-2: 4, 1e9: 1}, compute_first=1, compute_last=1, per_sample=True)
    solo, solo_stats = [], []
    for video, timesteps in enumerate((TIMESTEPS, steady)):
        model, call = factory(videos=(video,))
        apply_ada_cache(model, AdaCacheConfig(**config))
        solo.append(denoise(model, call, timesteps))
        solo_stats.append(ada_cache_stats(model)["cond"])
    assert solo_stats[0].reused == (0,) and solo_stats[1].reused[0] > 0

    model, call = factory(videos=(0, 1))
    apply_ada_cache(model, AdaCacheConfig(**config))
    together = denoise(model, call, torch.stack([TIMESTEPS, steady], dim=1))
    stats = ada_cache_stats(model)["cond"]
    assert stats.computed_steps == (solo_stats[0].computed_steps[0], solo_stats[1].computed_steps[0])
    for step, output in enumerate(together):
        for video in range(2):
            torch.testing.assert_close(output[video:video + 1], solo[video][step], atol=1e-5, rtol=1e-4)


@MODELS
def test_motion_regularisation_reads_the_frames_of_every_layout(factory):
    model, call = factory()
    apply_ada_cache(model, AdaCacheConfig(codebook="fast", moreg=True, moreg_window=(0.0, 1.0)))
    trace = record_metric_trace(model)
    outputs = denoise(model, call, torch.linspace(900, 100, 10))
    assert trace and all(entry["motion"] is not None for entry in trace)
    assert all(0 < entry["motion"][0] < float("inf") for entry in trace)
    assert all(torch.isfinite(output).all() for output in outputs)


# ------------------------------------------------------------------------------------------------ Latte


def test_latte_interleaved_spatial_and_temporal_stacks():
    model, call = latte()
    reference = denoise(model, call)
    # diffusers' First Block Cache may or may not cope with Latte's two interleaved stacks (it is not
    # AdaCache's business); once disabled, it must leave nothing behind that gets in AdaCache's way
    model.enable_cache(FirstBlockCacheConfig(threshold=0.1))
    with contextlib.suppress(Exception):  # whichever way it goes
        denoise(model, call)
    model.disable_cache()
    assert all_equal(denoise(model, call), reference)

    apply_ada_cache(model, AdaCacheConfig(codebook={1e9: 3}, compute_first=1, compute_last=1))
    blocks = cached_blocks(model)
    assert sum(name.startswith("temporal_transformer_blocks.") for name in blocks) == 2
    assert sum(name.startswith("transformer_blocks.") for name in blocks) == 2
    spatial, temporal = (CallCounter([attention_of(block) for name, block in blocks.items()
                                      if name.startswith(prefix)])
                         for prefix in ("transformer_blocks.", "temporal_transformer_blocks."))
    outputs = denoise(model, call)
    stats = ada_cache_stats(model)["cond"]
    assert stats.reused[0] > 0
    assert spatial.count == temporal.count == 2 * stats.computed[0]  # two blocks of each kind per computed step
    assert all(output.shape == (1, 4, 3, 8, 8) and torch.isfinite(output).all() for output in outputs)
    assert torch.equal(outputs[0], reference[0])


def _residual_recorder(block: nn.Module, residuals: list[torch.Tensor]):
    """Record the block's residual (its output's hidden states minus its input's) at every call."""

    def record(module, args, kwargs, output):
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        residuals.append((output[0] if isinstance(output, tuple) else output) - hidden)

    return block.register_forward_hook(record, with_kwargs=True)


def _temporal_frames(residual: torch.Tensor) -> torch.Tensor:
    """Latte's temporal layout of one video, (patches, frames, channels), as (1, frames, -1)."""
    return residual.transpose(0, 1).reshape(1, residual.shape[1], -1)


def _frame_major(frames: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """Frame-major tokens of one video, (1, frames * patches, channels), as (1, frames, -1)."""
    return lambda residual: residual.reshape(1, frames, -1)


@pytest.mark.parametrize("factory, monitor, frames_of", [
    pytest.param(lambda: latte(side=8, frames=3), "temporal_transformer_blocks.1", _temporal_frames, id="latte"),
    pytest.param(lambda: latte(side=4, frames=4), "temporal_transformer_blocks.1", _temporal_frames,
                 id="latte_as_many_patches_as_frames"),
    pytest.param(lambda: cogvideox(), "transformer_blocks.1", _frame_major(3), id="cogvideox"),
    pytest.param(lambda: cogvideox(patch_size_t=2), "transformer_blocks.1", _frame_major(2), id="cogvideox_1_5"),
])
def test_motion_score_compares_consecutive_frames(factory, monitor, frames_of):
    model, call = factory()
    apply_ada_cache(model, AdaCacheConfig(codebook=NEVER_REUSE, monitor_blocks=(monitor,), moreg=True,
                                          moreg_window=(0.0, 1.0)))
    residuals = []
    _residual_recorder(cached_blocks(model)[monitor], residuals)
    trace = record_metric_trace(model)
    denoise(model, call)
    assert len(trace) == len(TIMESTEPS) - 2  # observed from the second step, decided at the next one
    for entry in trace:
        frames = frames_of(residuals[entry["step"]])
        later, earlier = frames[:, 1:], frames[:, :-1]
        expected = (later - earlier).abs().sum() / (later.abs().sum() + earlier.abs().sum())
        assert entry["motion"][0] == pytest.approx(float(expected), rel=1e-4)


# ------------------------------------------------------------------------------------------------ pipelines


def test_mochi_pipeline_timesteps_rise_during_a_generation():
    model, call = mochi()
    apply_ada_cache(model, AdaCacheConfig(codebook={1e9: 3}, compute_first=1, compute_last=1,
                                          num_inference_steps=len(TIMESTEPS)))
    outputs = denoise(model, call, TIMESTEPS.flip(0), context="cond_uncond", step_index=False)
    stats = ada_cache_stats(model)["cond_uncond"]
    assert stats.computed[0] + stats.reused[0] == len(TIMESTEPS) and stats.reused[0] > 0
    assert all(torch.isfinite(output).all() for output in outputs)


def test_ltx_with_video_coordinates_instead_of_a_frame_count():
    model, call = ltx_video(coordinates=True)
    reference = denoise(model, call)
    apply_ada_cache(model, AdaCacheConfig(codebook=NEVER_REUSE))
    assert all_equal(denoise(model, call), reference)


def test_per_branch_schedules_do_not_disturb_each_other():
    config = dict(codebook={0.2: 3, 1e9: 1}, compute_first=1, compute_last=1, cfg="per_branch")
    timesteps = torch.linspace(900, 100, 10)
    alone = {}
    for context in ("cond", "uncond"):
        model, call = wan()
        apply_ada_cache(model, AdaCacheConfig(**config))
        denoise(model, call, timesteps, context=context)
        alone[context] = ada_cache_stats(model)[context].computed_steps
    assert alone["cond"] == alone["uncond"]

    model, call = wan()
    apply_ada_cache(model, AdaCacheConfig(**config))
    with torch.no_grad():
        for step, t in enumerate(timesteps):
            for context in ("cond", "uncond"):  # as WanPipeline does
                with model.cache_context(context, step_index=step, num_inference_steps=len(timesteps)):
                    call(model, t)
    stats = ada_cache_stats(model)
    assert {context: stats[context].computed_steps for context in alone} == alone


# ------------------------------------------------------------------------------------------------ refusals


@pytest.mark.parametrize("cache_config", [
    FirstBlockCacheConfig(threshold=0.1),
    PyramidAttentionBroadcastConfig(spatial_attention_block_skip_range=2, current_timestep_callback=lambda: 500),
], ids=["first_block_cache", "pyramid_attention_broadcast"])
def test_refuses_a_model_with_a_diffusers_cache(cache_config):
    model, call = cogvideox()
    reference = denoise(model, call)
    model.enable_cache(cache_config)
    with pytest.raises(AdaCacheError, match=f"already has a cache.*{type(cache_config).__name__}"):
        apply_ada_cache(model, AdaCacheConfig())
    assert not ada_cache_hooks(model)

    model.disable_cache()
    apply_ada_cache(model, AdaCacheConfig(codebook=NEVER_REUSE))
    assert all_equal(denoise(model, call), reference)


def test_refuses_to_apply_twice():
    model, call = wan()
    reference = denoise(model, call)
    apply_ada_cache(model, AdaCacheConfig(codebook=NEVER_REUSE))
    hooks = hook_names(model)
    with pytest.raises(AdaCacheError, match="already") as refusal:
        apply_ada_cache(model, AdaCacheConfig())
    assert "AdaCache" in str(refusal.value)
    with pytest.raises(ValueError, match="already"):  # nor does diffusers stack one of its caches on AdaCache
        model.enable_cache(FirstBlockCacheConfig(threshold=0.1))
    assert hook_names(model) == hooks
    assert all_equal(denoise(model, call), reference)  # the first AdaCache still works as before


def test_without_a_step_count_the_fallback_context_asks_for_one():
    model, call = mochi()
    apply_ada_cache(model, AdaCacheConfig())
    with pytest.raises(AdaCacheError, match="num_inference_steps"):
        denoise(model, call, context=None)
