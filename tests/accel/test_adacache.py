import copy
import json

import pytest
import torch
from hook_contract import StepHookContract  # tests/accel/hook_contract.py: the shared contract
from torch import nn

from reelkit.accel._diffusers_compat import hook_names
from reelkit.accel.adacache import (
    AdaCacheConfig,
    AdaCacheError,
    Codebook,
    ada_cache_stats,
    apply_ada_cache,
    cached_blocks,
    preset_codebook,
    register_ada_cache_block,
    remove_ada_cache,
    reset_ada_cache,
)
from reelkit.models.dit import VideoDiT
from reelkit.pipelines.text_to_video import tiny_pipeline

NEVER_REUSE = {1e9: 1}
STEPS = 12
PROMPT = "a red circle moving right"


@pytest.fixture(scope="module")
def base_pipe():
    return tiny_pipeline(open_gates=True)


@pytest.fixture
def pipe(base_pipe):
    return copy.deepcopy(base_pipe)


def generate(pipe, prompt=PROMPT, seed=0, steps=STEPS, **kwargs):
    generator = [torch.Generator().manual_seed(seed + i) for i in range(1 if isinstance(prompt, str) else len(prompt))]
    return pipe(prompt, num_frames=5, height=32, width=32, num_inference_steps=steps, guidance_scale=4.0,
                generator=generator, output_type="latent", **kwargs).frames


def count_calls(module):
    calls = [0]
    module.register_forward_pre_hook(lambda m, args: calls.__setitem__(0, calls[0] + 1))
    return calls


def ada_hooks(model):
    return {name for name in hook_names(model) if name.startswith("ada_cache")}


class TestAdaCacheContract(StepHookContract):
    hook_prefix, error, steps = "ada_cache", AdaCacheError, STEPS

    def apply(self, model, config=None):
        apply_ada_cache(model, config)

    def remove(self, model):
        remove_ada_cache(model)

    def exact_config(self):
        return AdaCacheConfig(codebook=NEVER_REUSE)

    def skipping_config(self):
        return AdaCacheConfig(codebook={0.5: 4, 1.0: 2, 5.0: 1})

    def generate(self, pipe, seed=0, **kwargs):
        return generate(pipe, seed=seed, **kwargs)


# ------------------------------------------------------------------------------------------------ exactness


def test_a_codebook_that_never_reuses_is_bit_identical_and_removal_restores_the_model(pipe):
    plain = generate(pipe)
    apply_ada_cache(pipe.transformer, AdaCacheConfig(codebook=NEVER_REUSE))
    assert torch.equal(generate(pipe), plain)
    assert ada_cache_stats(pipe.transformer)["cond"].reused == (0,)
    remove_ada_cache(pipe.transformer)
    assert not ada_hooks(pipe.transformer) and not pipe.transformer.is_cache_enabled
    assert torch.equal(generate(pipe), plain)


def test_reuse_skips_the_blocks_and_stays_close(pipe):
    plain = generate(pipe)
    attention = count_calls(pipe.transformer.transformer_blocks[0].attn1)
    apply_ada_cache(pipe.transformer, AdaCacheConfig(codebook={1e9: 3}))
    cached = generate(pipe)
    stats = ada_cache_stats(pipe.transformer)
    assert stats["cond"].computed == stats["uncond"].computed  # one schedule shared by the CFG branches
    computed, reused = stats["cond"].computed[0], stats["cond"].reused[0]
    assert reused > 0 and computed + reused == STEPS
    assert attention[0] == 2 * computed  # cond + uncond calls, only on computed steps
    assert stats["cond"].computed_steps[0][:2] == (0, 1) and stats["cond"].computed_steps[0][-2:] == (10, 11)
    assert torch.isfinite(cached).all() and not torch.equal(cached, plain)


def test_reset_forgets_schedules(pipe):
    apply_ada_cache(pipe.transformer, AdaCacheConfig(codebook={1e9: 3}))
    first = generate(pipe)
    reset_ada_cache(pipe.transformer)
    assert torch.equal(generate(pipe), first)


# ------------------------------------------------------------------------------------------------ schedules


def test_per_branch_schedules_are_kept_per_context(pipe):
    apply_ada_cache(pipe.transformer, AdaCacheConfig(codebook={1e9: 3}, cfg="per_branch"))
    generate(pipe)
    stats = ada_cache_stats(pipe.transformer)
    assert set(stats) == {"cond", "uncond"}
    assert all(s.computed[0] + s.reused[0] == STEPS for s in stats.values())


def test_per_sample_schedules_give_each_video_its_solo_result(pipe):
    config = AdaCacheConfig(codebook={0.2: 4, 0.6: 2, 5.0: 1}, per_sample=True)
    apply_ada_cache(pipe.transformer, config)
    prompts = ["a red circle moving right", "a blue star spinning"]
    together = generate(pipe, prompts, seed=3)
    rows = ada_cache_stats(pipe.transformer)["cond"]
    assert len(rows.computed) == 2
    for i, prompt in enumerate(prompts):
        alone = generate(pipe, prompt, seed=3 + i)
        torch.testing.assert_close(together[i:i + 1], alone, atol=1e-5, rtol=1e-5)


def test_more_motion_than_the_centre_means_more_computed_steps(pipe):
    def computed(centre):
        apply_ada_cache(pipe.transformer, AdaCacheConfig(codebook={0.2: 4, 0.6: 2, 5.0: 1}, moreg=True,
                                                         moreg_centre=centre, moreg_window=(0.0, 1.0)))
        generate(pipe)
        steps = ada_cache_stats(pipe.transformer)["cond"].computed[0]
        remove_ada_cache(pipe.transformer)
        return steps

    assert computed(1e-3) == STEPS  # every video "moves far more than usual": compute everything
    assert computed(1e3) < computed(1e-3)


def test_presets_scale_with_the_step_count():
    assert preset_codebook("fast", 30).rates == (6, 5, 4, 3, 2, 1)
    assert preset_codebook("fast", 60).rates == (12, 10, 8, 6, 4, 2)
    with pytest.raises(AdaCacheError, match="unknown AdaCache preset"):
        AdaCacheConfig(codebook="fastest")


# ------------------------------------------------------------------------------------------------ codebooks


@pytest.mark.parametrize("table, metrics, rates", [
    ({1.0: 5}, [0.5, 2.0], [5, 5]),
    ({0.3: 2, 0.1: 6}, [0.05, 0.1, 0.2, 0.3, 9.0], [6, 2, 2, 2, 2]),  # sorted; c < threshold; last rate above
    ({0.01: 9, 0.02: 8, 0.03: 7, 0.04: 6, 0.05: 5, 0.06: 4, 0.07: 3, 0.08: 2}, [0.015, 0.075, 1.0], [8, 2, 2]),
])
def test_codebooks_of_any_length(table, metrics, rates):
    assert Codebook.from_table(table).rates_for(torch.tensor(metrics)).tolist() == rates


@pytest.mark.parametrize("table, message", [
    ({}, "at least one entry"),
    ([(0.1, 2), (0.1, 3)], "strictly ascending"),
    ({0.1: 0}, "whole numbers >= 1"),
    ({"fast": "x"}, "could not read"),
])
def test_bad_codebooks_are_refused(table, message):
    with pytest.raises(AdaCacheError, match=message):
        AdaCacheConfig(codebook=table)


def test_codebook_files_round_trip_and_bad_files_are_refused(tmp_path):
    book = Codebook.from_table({0.05: 6, 0.1: 3, 0.3: 1})
    book.save(tmp_path / "book.json", target_psnr=30)
    assert Codebook.load(tmp_path / "book.json") == book
    assert json.loads((tmp_path / "book.json").read_text())["target_psnr"] == 30
    with pytest.raises(AdaCacheError, match="no such codebook"):
        Codebook.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(AdaCacheError, match="not a codebook file"):
        Codebook.load(tmp_path / "bad.json")


@pytest.mark.parametrize("kwargs, message", [
    (dict(norm="cosine"), "norm"), (dict(cfg="both"), "cfg"), (dict(compute_first=0), "compute_first"),
    (dict(moreg_window=(0.9, 0.1)), "moreg_window"), (dict(moreg_centre=0), "moreg_centre"),
])
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(AdaCacheError, match=message):
        AdaCacheConfig(**kwargs)


# ------------------------------------------------------------------------------------------------ models


def tiny_dit():
    torch.manual_seed(0)
    model = VideoDiT(num_layers=3, num_attention_heads=2, attention_head_dim=8, text_dim=12, sample_size=4).eval()
    for name, parameter in model.named_parameters():
        if any(key in name for key in ("time_modulation", "proj_out", "scale_shift_table")):
            parameter.data.normal_(0, 0.3)
    return model


def run_direct(model, steps=8):
    """A denoising-like loop calling the model with no cache context at all."""
    torch.manual_seed(0)
    x, text = torch.randn(1, 8, 3, 8, 8), torch.randn(1, 6, 12)
    outputs = []
    with torch.no_grad():
        for t in torch.linspace(950, 50, steps):
            out = model(x, t, text).sample
            x = x - 0.1 * out
            outputs.append(out)
    return torch.stack(outputs)


def test_works_without_a_cache_context_given_the_step_count():
    model = tiny_dit()
    plain = run_direct(model)
    apply_ada_cache(model, AdaCacheConfig(codebook=NEVER_REUSE, num_inference_steps=8))
    assert torch.equal(run_direct(model), plain)
    remove_ada_cache(model)
    apply_ada_cache(model, AdaCacheConfig(codebook={1e9: 3}, num_inference_steps=8))
    first = run_direct(model)
    assert ada_cache_stats(model)["ada_cache"].reused[0] > 0
    assert torch.equal(run_direct(model), first)  # the rising timestep starts a new generation


def test_without_a_step_count_the_error_says_what_to_set():
    model = tiny_dit()
    apply_ada_cache(model, AdaCacheConfig())
    with pytest.raises(AdaCacheError, match="num_inference_steps"):
        run_direct(model)


@pytest.mark.parametrize("kwargs, message", [
    (dict(monitor_blocks=("transformer_blocks.9",)), "not a cached block"),
    (dict(monitor_residual="attn_spatial"), "no submodule"),
])
def test_bad_monitors_are_refused(kwargs, message):
    with pytest.raises(AdaCacheError, match=message):
        apply_ada_cache(tiny_dit(), AdaCacheConfig(**kwargs))


def test_a_model_without_known_blocks_is_refused_with_the_fix():
    with pytest.raises(AdaCacheError, match="register_ada_cache_block"):
        apply_ada_cache(nn.Sequential(nn.Linear(2, 2)), AdaCacheConfig())


class ToyBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.mix = nn.Linear(4, 4)

    def forward(self, hidden_states, scale):
        return hidden_states + scale * self.mix(hidden_states).tanh()


class ToyDiT(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList(ToyBlock() for _ in range(4))

    def forward(self, hidden_states, timestep):
        B, C, T, H, W = hidden_states.shape
        x = hidden_states.permute(0, 2, 3, 4, 1).reshape(B, T * H * W, C)  # (B, T*S, C)
        for layer in self.layers:
            x = layer(x, timestep / 1000)
        return x


def test_a_new_model_needs_one_registration_line():
    torch.manual_seed(0)
    model, x = ToyDiT(), torch.randn(1, 4, 3, 2, 2)
    with pytest.raises(AdaCacheError):
        apply_ada_cache(model, AdaCacheConfig(num_inference_steps=6))
    register_ada_cache_block(ToyBlock)
    apply_ada_cache(model, AdaCacheConfig(codebook={1e9: 2}, num_inference_steps=6, moreg=True))
    assert list(cached_blocks(model)) == [f"layers.{i}" for i in range(4)]
    outputs = [model(x, t) for t in torch.linspace(900, 100, 6)]
    assert ada_cache_stats(model)["ada_cache"].reused[0] > 0 and all(torch.isfinite(o).all() for o in outputs)
