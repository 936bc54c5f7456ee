"""Step Rehash on the reelkit teacher's architecture and on diffusers' SVD and AnimateDiff U-Nets (tiny random
configs, CPU): every step a key step is bit-identical and removal restores the model, rehash steps really skip
the deep part, the guidance branches share one decision but keep their own features, and no state leaks from
one generation into the next. Plus the key-step search, schedules and calibration."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from diffusers import UNetMotionModel, UNetSpatioTemporalConditionModel
from hook_contract import StepHookContract  # tests/accel/hook_contract.py: the shared contract

from reelkit.accel._diffusers_compat import hook_names
from reelkit.accel.adacache import AdaCacheConfig, apply_ada_cache, remove_ada_cache
from reelkit.accel.step_rehash import (
    RehashSchedule,
    StepRehashConfig,
    StepRehashError,
    apply_step_rehash,
    calibrate_step_rehash,
    config_from_options,
    deep_part,
    format_stats,
    gram_from_trace,
    greedy_key_steps,
    optimal_key_steps,
    record_rehash_features,
    remove_step_rehash,
    resample_similarity,
    reset_step_rehash,
    search_key_steps,
    similarity_matrix,
    step_rehash_stats,
    uniform_key_steps,
)
from reelkit.generation import GenerationSettings
from reelkit.models.dit import VideoDiT
from reelkit.pipelines.text_to_video import TextToVideoPipeline, tiny_pipeline

STEPS = 10
PROMPT = "a red circle moving right"


pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------------------ key steps


def test_uniform_key_steps_are_deepcaches_schedule():
    assert uniform_key_steps(50, 10) == list(range(0, 50, 5)) and uniform_key_steps(50, 25) == list(range(0, 50, 2))
    assert uniform_key_steps(25, 13)[:7] == [0, 2, 4, 6, 8, 10, 12]
    assert uniform_key_steps(50, 1) == [0]
    assert uniform_key_steps(5, 5) == [0, 1, 2, 3, 4]
    assert len(uniform_key_steps(50, 15)) == 15
    with pytest.raises(StepRehashError, match="between 1 and the number of steps"):
        uniform_key_steps(10, 11)


def _trajectory_similarity(n: int, seed: int = 0) -> torch.Tensor:
    """Cosine similarity of a random walk that slows down, like a denoising trajectory."""
    generator = torch.Generator().manual_seed(seed)
    steps = torch.randn(n, 64, generator=generator) * torch.linspace(2.0, 0.1, n)[:, None]
    features = torch.cumsum(steps, 0) + 3.0
    unit = features / features.norm(dim=1, keepdim=True)
    return unit @ unit.T


@pytest.mark.parametrize("budget", [1, 2, 5, 9, 17, 20])
def test_the_search_meets_the_budget_exactly_and_keeps_step_zero(budget):
    sim = _trajectory_similarity(20)
    keys = search_key_steps(sim, budget)
    assert len(keys) == budget and keys[0] == 0 and keys == sorted(set(keys))
    last = search_key_steps(sim, budget, compute_last=True)
    assert len(last) == budget and (budget == 1 or last[-1] == 19)


def test_the_search_places_keys_where_the_feature_changes():
    sim = _trajectory_similarity(30)
    keys = search_key_steps(sim, 8)
    assert sum(k < 15 for k in keys) > sum(k >= 15 for k in keys)  # fast early changes get more keys
    threshold_keys = greedy_key_steps(sim, 0.999)
    assert threshold_keys[0] == 0 and all(sim[a, b] >= 0.999 or b in threshold_keys
                                          for a, b in zip(threshold_keys, threshold_keys[1:], strict=False))


def test_similarity_resamples_over_normalised_time():
    sim = _trajectory_similarity(20).double()
    wide = resample_similarity(sim, 40)
    assert wide.shape == (40, 40) and wide[0, -1] == pytest.approx(float(sim[0, -1]))
    assert torch.allclose(similarity_matrix(wide, "cosine").diagonal(), torch.ones(40, dtype=torch.float64))
    assert resample_similarity(sim, 20) is sim
    assert len(search_key_steps(wide, 12)) == 12


def test_the_optimal_search_minimises_the_summed_dissimilarity():
    sim = _trajectory_similarity(12)
    keys = optimal_key_steps(sim, 4)
    assert len(keys) == 4 and keys[0] == 0

    def cost(ks):
        return sum(1 - float(sim[max(k for k in ks if k <= t), t]) for t in range(12))

    import itertools

    best = min(([0, *rest] for rest in itertools.combinations(range(1, 12), 3)), key=cost)
    assert cost(keys) == pytest.approx(cost(best))
    assert search_key_steps(sim, 4, method="optimal") == keys
    assert search_key_steps(sim, 4, compute_last=True, method="optimal")[-1] == 11


def test_distance_and_cosine_similarity_from_a_gram_matrix():
    features = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    gram = features @ features.T / (features.square().sum(1).mean())
    cosine, distance = similarity_matrix(gram, "cosine"), similarity_matrix(gram, "distance")
    assert cosine[0, 1] == pytest.approx(1.0) and cosine[0, 2] == pytest.approx(0.0)
    assert distance[0, 1] < 1.0 and distance[0, 0] == pytest.approx(1.0)  # the distance sees the magnitude change
    with pytest.raises(StepRehashError, match="metric"):
        similarity_matrix(gram, "l7")


def test_bad_similarity_and_budget_are_refused():
    with pytest.raises(StepRehashError, match="square"):
        search_key_steps(torch.ones(3, 4), 2)
    with pytest.raises(StepRehashError, match="between 1"):
        search_key_steps(torch.ones(3, 3), 0)


# ------------------------------------------------------------------------------------------------ schedules


def test_schedules_round_trip_and_map_to_other_budgets_and_step_counts(tmp_path):
    schedule = RehashSchedule(20, _trajectory_similarity(20), (0, 2, 5), {"feature": "temporal"})
    schedule.save(tmp_path / "s.json", note="x")
    loaded = RehashSchedule.load(tmp_path / "s.json")
    assert loaded.num_steps == 20 and loaded.key_steps == (0, 2, 5) and loaded.metadata["note"] == "x"
    assert torch.allclose(loaded.gram, schedule.gram, atol=1e-5)
    assert loaded.key_steps_for(None, 20) == [0, 2, 5] and loaded.key_steps_for(3, 20) == [0, 2, 5]
    assert len(loaded.key_steps_for(7, 20)) == 7 and len(loaded.key_steps_for(7, 35)) == 7
    assert json.loads((tmp_path / "s.json").read_text())["format"] == "reelkit-step-rehash"


def test_a_schedule_of_key_steps_only_cannot_be_mapped(tmp_path):
    (tmp_path / "k.json").write_text('{"steps": 10, "key_steps": [0, 3, 6]}')
    schedule = RehashSchedule.load(tmp_path / "k.json")
    assert schedule.key_steps_for(None, 10) == [0, 3, 6]
    with pytest.raises(StepRehashError, match="cannot be mapped"):
        schedule.key_steps_for(None, 20)
    with pytest.raises(StepRehashError, match="cannot be mapped"):
        schedule.key_steps_for(4, 10)


@pytest.mark.parametrize("text, message", [
    (None, "no such step rehash schedule"),
    ("[1, 2", "not a step rehash schedule"),
    ('{"codebook": []}', "not a step rehash schedule"),
    ('{"steps": 4, "gram": [[1, 0], [0, 1]]}', "must be 4 x 4"),
    ('{"steps": 4, "key_steps": [1, 2]}', "include step 0"),
])
def test_bad_schedule_files_are_refused(tmp_path, text, message):
    path = tmp_path / "bad.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises(StepRehashError, match=message):
        RehashSchedule.load(path)


@pytest.mark.parametrize("kwargs, message", [
    ({"num_full_steps": 0}, "num_full_steps"),
    ({"num_full_steps": 11, "num_inference_steps": 10}, "between 1 and the number of steps"),
    ({"key_steps": [-1, 2]}, ">= 0"),
    ({"shallow_blocks": -1}, "shallow_blocks"),
    ({"similarity_feature": "spatial"}, "similarity_feature"),
    ({"metric": "l7"}, "metric"),
    ({"search": "random"}, "search"),
])
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(StepRehashError, match=message):
        StepRehashConfig(**kwargs)


def test_cli_options_pick_the_bundled_profile_or_uniform_steps(tmp_path):
    assert config_from_options(None, None, 50, bundled=True) is None
    uniform = config_from_options(5, None, 20, bundled=False)
    assert uniform.schedule is None and uniform.key_steps_for(20) == uniform_key_steps(20, 5)
    with pytest.raises(StepRehashError, match="between 1 and the number of steps"):
        config_from_options(21, None, 20, bundled=False)
    RehashSchedule(20, _trajectory_similarity(20), metadata={"shallow_blocks": [1, 0]}).save(tmp_path / "s.json")
    searched = config_from_options(6, tmp_path / "s.json", 30, bundled=False)
    assert len(searched.key_steps_for(30)) == 6 and searched.shallow_blocks == (1, 0)


# ------------------------------------------------------------------------------------------------ the DiT


def _open_gates(model):
    for name, parameter in model.named_parameters():
        if any(key in name for key in ("time_modulation", "proj_out", "scale_shift_table")):
            parameter.data.normal_(0, 0.3)
    return model.eval()


@pytest.fixture(scope="module")
def base_pipe():
    """The tiny pipeline with a 4-block transformer (the tiny default has 2), gates open."""
    pipe = tiny_pipeline()
    torch.manual_seed(1)
    transformer = _open_gates(VideoDiT(num_layers=4, num_attention_heads=2, attention_head_dim=8, text_dim=16,
                                       sample_size=4))
    pipe = TextToVideoPipeline(transformer, pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def pipe(base_pipe):
    return copy.deepcopy(base_pipe)


def generate(pipe, steps=STEPS, seed=0, **kwargs):
    return pipe(PROMPT, num_frames=5, height=32, width=32, num_inference_steps=steps, guidance_scale=4.0,
                generator=torch.Generator().manual_seed(seed), output_type="latent", **kwargs).frames


def count_calls(module):
    calls = [0]
    module.register_forward_pre_hook(lambda m, args: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_every_step_a_key_step_is_bit_identical_and_removal_restores_the_dit(pipe):
    plain = generate(pipe)
    apply_step_rehash(pipe.transformer, StepRehashConfig())
    assert torch.equal(generate(pipe), plain)
    apply_step_rehash_again = StepRehashConfig(key_steps=range(STEPS))
    remove_step_rehash(pipe.transformer)
    apply_step_rehash(pipe.transformer, apply_step_rehash_again)
    assert torch.equal(generate(pipe), plain)
    remove_step_rehash(pipe.transformer)
    assert not {n for n in hook_names(pipe.transformer) if n.startswith("step_rehash")}
    assert getattr(pipe.transformer, "_cache_config", None) is None
    assert torch.equal(generate(pipe), plain)


def test_rehash_steps_skip_the_deep_blocks_and_stay_close(pipe):
    plain = generate(pipe)
    blocks = pipe.transformer.transformer_blocks
    assert deep_part(pipe.transformer) == ["transformer_blocks.1", "transformer_blocks.2"]
    apply_step_rehash(pipe.transformer, StepRehashConfig(num_full_steps=4))
    shallow, deep = count_calls(blocks[0]), count_calls(blocks[1].attn1)
    rehashed = generate(pipe)
    stats = step_rehash_stats(pipe.transformer)
    assert set(stats) == {"cond", "uncond"}
    assert stats["cond"] == stats["uncond"]  # the guidance branches share the decision
    assert stats["cond"].full_steps == tuple(uniform_key_steps(STEPS, 4))
    assert shallow[0] == 2 * STEPS and deep[0] == 2 * 4
    assert not torch.equal(rehashed, plain)
    assert (rehashed - plain).abs().mean() < 0.5 * plain.abs().mean()
    assert format_stats(stats).startswith(f"step rehash: 4 full steps of {STEPS} (key steps 0, 3, 5, 8)")


def test_each_branch_keeps_its_own_feature(pipe):
    """Swapping the stored features of the two branches would change the result: they differ."""
    apply_step_rehash(pipe.transformer, StepRehashConfig(num_full_steps=3))
    hook = pipe.transformer._diffusers_hook.get_hook("step_rehash_model")
    seen = {}
    original = hook.begin

    def spy(module, context, *rest):
        result = original(module, context, *rest)
        if hook.run.rehash:
            seen.setdefault(context.name, hook.run.state.feature)
        return result

    hook.begin = spy
    generate(pipe)
    assert set(seen) == {"cond", "uncond"} and not torch.equal(seen["cond"], seen["uncond"])


def test_shallow_blocks_choose_the_deep_part(pipe):
    assert deep_part(pipe.transformer, StepRehashConfig(shallow_blocks=(1, 0))) == [
        "transformer_blocks.1", "transformer_blocks.2", "transformer_blocks.3"]
    assert deep_part(pipe.transformer, StepRehashConfig(shallow_blocks=0)) == [
        f"transformer_blocks.{i}" for i in range(4)]
    with pytest.raises(StepRehashError, match="leaves no deep block"):
        apply_step_rehash(pipe.transformer, StepRehashConfig(shallow_blocks=2))
    assert deep_part(tiny_pipeline().transformer) == ["transformer_blocks.1"]  # 2 blocks: the first stays shallow


class TestStepRehashContract(StepHookContract):
    hook_prefix, error, steps = "step_rehash", StepRehashError, STEPS

    def apply(self, model, config=None):
        apply_step_rehash(model, config)

    def remove(self, model):
        remove_step_rehash(model)

    def exact_config(self):
        return StepRehashConfig(key_steps=range(STEPS))

    def skipping_config(self):
        return StepRehashConfig(num_full_steps=4)

    def generate(self, pipe, seed=0, **kwargs):
        return generate(pipe, seed=seed, **kwargs)


def test_refuses_to_stack_on_adacache_and_stats_need_it_applied(pipe):
    model = pipe.transformer
    apply_ada_cache(model, AdaCacheConfig())
    with pytest.raises(StepRehashError, match="AdaCacheConfig"):
        apply_step_rehash(model)
    remove_ada_cache(model)
    with pytest.raises(StepRehashError, match="not applied"):
        step_rehash_stats(model)


def test_reset_forgets_the_stored_features(pipe, base_pipe):
    apply_step_rehash(pipe.transformer, StepRehashConfig(num_full_steps=4))
    generate(pipe, seed=3)
    reset_step_rehash(pipe.transformer)
    fresh = copy.deepcopy(base_pipe)
    apply_step_rehash(fresh.transformer, StepRehashConfig(num_full_steps=4))
    assert torch.equal(generate(pipe), generate(fresh))


def test_a_model_without_a_deep_part_is_refused():
    with pytest.raises(StepRehashError, match="neither a DiT"):
        apply_step_rehash(torch.nn.Linear(2, 2))


def test_key_steps_beyond_the_generation_are_refused(pipe):
    apply_step_rehash(pipe.transformer, StepRehashConfig(key_steps=[0, 30]))
    with pytest.raises(StepRehashError, match="beyond"):
        generate(pipe)


def test_calibration_records_the_trajectory_and_searches_the_budget(base_pipe, tmp_path):
    settings = GenerationSettings(steps=8, guidance=4.0, frames=5, size=32)
    result = calibrate_step_rehash(copy.deepcopy(base_pipe), [PROMPT, "a blue star spinning"], 3, settings)
    assert len(result.key_steps) == 3 and result.key_steps[0] == 0
    assert result.schedule.gram.shape == (8, 8)
    assert result.schedule.gram.diagonal().mean() == pytest.approx(1.0)  # normalised by the mean squared norm
    cosine = similarity_matrix(result.schedule.gram, "cosine")
    assert torch.allclose(cosine.diagonal(), torch.ones(8, dtype=torch.float64))
    assert result.psnr_db > 0 and result.uniform_psnr_db > 0
    result.save(tmp_path / "r.json", steps_note="ok")
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["key_steps"] == result.key_steps and data["budget"] == 3 and len(data["gram"]) == 8
    with pytest.raises(StepRehashError, match="at least one prompt"):
        calibrate_step_rehash(base_pipe, [], 3, settings)


@pytest.mark.parametrize("feature", ["deep", "temporal"])
def test_the_recorded_trajectory_gives_a_similarity_matrix(pipe, feature):
    apply_step_rehash(pipe.transformer, StepRehashConfig(similarity_feature=feature))
    trace = record_rehash_features(pipe.transformer)
    generate(pipe, steps=5)
    generate(pipe, steps=5)
    assert len(trace) == 2 * 2 * 5  # two generations, two branches, five steps
    gram = gram_from_trace(trace, 5)
    assert gram.shape == (5, 5) and torch.allclose(gram, gram.T)
    assert float(similarity_matrix(gram, "cosine").min()) > -1.0001
    assert torch.allclose(similarity_matrix(gram, "distance").diagonal(), torch.ones(5, dtype=torch.float64))
    size = trace[0]["feature"].numel()  # temporal attention (B*S, T, C) or the deep residual (B, T*S, C): same size
    assert size == 1 * 2 * 4 * 16  # one video, 2 latent frames of 2x2 tokens, 16 channels
    with pytest.raises(StepRehashError, match="no complete 7-step"):
        gram_from_trace(trace, 7)


# ------------------------------------------------------------------------------------------------ U-Nets

TIMESTEPS = torch.linspace(900, 100, 6)


def _noisy(model):
    for parameter in model.parameters():
        parameter.data.add_(0.05 * torch.randn_like(parameter))
    return model.eval()


def tiny_svd():
    torch.manual_seed(0)
    return _noisy(UNetSpatioTemporalConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"), cross_attention_dim=16,
        num_attention_heads=(2, 4), addition_time_embed_dim=4, projection_class_embeddings_input_dim=12,
        num_frames=3))


def tiny_animatediff():
    torch.manual_seed(0)
    return _noisy(UNetMotionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlockMotion", "DownBlockMotion"),
        up_block_types=("UpBlockMotion", "CrossAttnUpBlockMotion"), cross_attention_dim=16, num_attention_heads=2,
        norm_num_groups=32, motion_num_attention_heads=2, motion_max_seq_length=8))


def run_svd(model, batch=2):
    """A denoising-like loop with both guidance branches batched in one call and no cache context."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, 4, 8, 8, generator=generator)
    text, ids = torch.randn(batch, 1, 16, generator=generator), torch.tensor([[6.0, 127.0, 0.02]] * batch)
    outputs = []
    with torch.no_grad():
        for t in TIMESTEPS:
            out = model(x, t, text, ids).sample
            x = x - 0.1 * out
            outputs.append(out)
    return torch.stack(outputs)


def run_animatediff(model, batch=2):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 4, 3, 8, 8, generator=generator)
    text = torch.randn(batch, 4, 16, generator=generator).repeat_interleave(3, dim=0)  # per frame, as the pipeline
    outputs = []
    with torch.no_grad():
        for t in TIMESTEPS:
            out = model(x, t, text).sample
            x = x - 0.1 * out
            outputs.append(out)
    return torch.stack(outputs)


UNETS = [pytest.param(tiny_svd, run_svd, id="svd"), pytest.param(tiny_animatediff, run_animatediff, id="animatediff")]


@pytest.mark.parametrize("make, run", UNETS)
def test_unet_every_step_a_key_step_is_bit_identical_and_removal_restores_it(make, run):
    model = make()
    plain = run(model)
    apply_step_rehash(model, StepRehashConfig(num_inference_steps=len(TIMESTEPS)))
    assert torch.equal(run(model), plain)
    remove_step_rehash(model)
    assert not {n for n in hook_names(model) if n.startswith("step_rehash")}
    assert torch.equal(run(model), plain)


@pytest.mark.parametrize("make, run", UNETS)
def test_unet_rehash_steps_run_only_the_shallow_path(make, run):
    model = make()
    plain = run(model)
    assert deep_part(model) == ["down_blocks.1", "mid_block", "up_blocks.0"]
    apply_step_rehash(model, StepRehashConfig(num_full_steps=2, num_inference_steps=len(TIMESTEPS)))
    shallow, deep = count_calls(model.up_blocks[-1].resnets[0]), count_calls(model.mid_block.resnets[0])
    inner = count_calls(model.down_blocks[1].resnets[0])
    first = run(model)
    stats = step_rehash_stats(model)["step_rehash"]
    assert stats.full_steps == (0, 3) and len(stats.rehash_steps) == 4
    assert shallow[0] == len(TIMESTEPS) and deep[0] == inner[0] == 2
    assert not torch.equal(first, plain) and torch.equal(first[0], plain[0])
    assert (first - plain).abs().mean() < 0.5 * plain.abs().mean()
    assert torch.equal(run(model), first)  # the timestep turning back up starts a new generation


@pytest.mark.parametrize("make, run", UNETS)
def test_unet_steps_follow_the_timestep_when_a_generation_restarts_early(make, run):
    model = make()
    apply_step_rehash(model, StepRehashConfig(num_full_steps=3, num_inference_steps=len(TIMESTEPS)))
    x = torch.randn(2, 3, 4, 8, 8) if make is tiny_svd else torch.randn(2, 4, 3, 8, 8)
    args = (torch.randn(2, 1, 16), torch.tensor([[6.0, 127.0, 0.02]] * 2)) if make is tiny_svd else \
        (torch.randn(6, 4, 16),)
    with torch.no_grad():
        for t in TIMESTEPS[:2]:  # an interrupted generation
            model(x, t, *args)
    assert torch.equal(run(model), (lambda m: (apply_step_rehash(m, StepRehashConfig(
        num_full_steps=3, num_inference_steps=len(TIMESTEPS))), run(m))[1])(make()))


def test_unet_without_a_step_count_the_error_says_what_to_set():
    model = tiny_svd()
    apply_step_rehash(model, StepRehashConfig(num_full_steps=2))
    with pytest.raises(StepRehashError, match="num_inference_steps"):
        run_svd(model)


def test_unet_shallow_levels_are_checked():
    model = tiny_animatediff()
    with pytest.raises(StepRehashError, match="outer levels"):
        apply_step_rehash(model, StepRehashConfig(shallow_blocks=2))
