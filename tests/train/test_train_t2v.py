import subprocess
import sys

import pytest
import torch
import yaml

from reelkit.errors import ReelkitError
from reelkit.pipelines.text_to_video import load_text_to_video
from reelkit.train.latent_cache import LatentCache, build_latent_cache
from reelkit.train.t2v import run
from reelkit.vae import CVVAE


@pytest.fixture(scope="module")
def tiny_vae_dir(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("vae") / "cvvae"
    CVVAE(block_out_channels=(8, 8, 8, 8), norm_num_groups=4).save_pretrained(folder)
    return folder


def write_config(tmp_path, vae_dir, **overrides):
    config = {"output_dir": str(tmp_path / "run"), "latent_cache": str(tmp_path / "cache"), "cache_clips": 8,
              "num_frames": 5, "size": 32, "vae": str(vae_dir),
              "model": {"num_layers": 1, "num_attention_heads": 2, "attention_head_dim": 8},
              "text_encoder": {"dim": 16, "num_layers": 1, "num_heads": 2},
              "batch_size": 4, "max_steps": 3, "warmup_steps": 1, "save_every": 2, "log_every": 1, **overrides}
    path = tmp_path / "t2v.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_trains_exports_a_loadable_pipeline_and_logs_a_loss_curve(tmp_path, tiny_vae_dir):
    model_dir = run(write_config(tmp_path, tiny_vae_dir))
    # a VAE that is not a bundled one travels with the pipeline, so the folder loads on its own
    assert {p.name for p in model_dir.iterdir()} == {"model_index.json", "transformer", "text_encoder", "tokenizer",
                                                      "scheduler", "vae"}
    assert (tmp_path / "run" / "loss.png").stat().st_size > 0
    assert len((tmp_path / "run" / "loss.csv").read_text().splitlines()) == 4  # header + 3 steps
    pipe = load_text_to_video(model_dir)
    pipe.set_progress_bar_config(disable=True)
    video = pipe("a red circle moving right", num_frames=5, height=32, width=32, num_inference_steps=2).frames
    assert video.shape == (1, 3, 5, 32, 32)


def test_a_time_limited_run_resumes_from_its_checkpoint(tmp_path, tiny_vae_dir, capsys):
    import json

    run(write_config(tmp_path, tiny_vae_dir, max_steps=4, time_limit_minutes=0))  # stops after one step
    state = tmp_path / "run" / "checkpoint" / "trainer_state.json"
    assert json.loads(state.read_text())["step"] == 1
    run(write_config(tmp_path, tiny_vae_dir, max_steps=4))
    assert "resumed from" in capsys.readouterr().out
    assert json.loads(state.read_text())["step"] == 4
    csv = (tmp_path / "run" / "loss.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in csv[1:]] == ["1", "2", "3", "4"]


def test_latent_cache_is_built_once_resumes_and_refuses_other_settings(tmp_path, tiny_vae_dir):
    vae = CVVAE.from_pretrained(tiny_vae_dir)
    folder = build_latent_cache(tmp_path / "c", num_clips=6, num_frames=5, size=32, shard_size=4, vae=vae)
    shards = sorted(folder.glob("shard_*"))
    assert len(shards) == 2
    stamp = shards[0].stat().st_mtime_ns
    build_latent_cache(folder, num_clips=6, num_frames=5, size=32, shard_size=4, vae=vae)
    assert shards[0].stat().st_mtime_ns == stamp  # kept, not re-encoded
    cache = LatentCache(folder, sample=False)
    assert len(cache) == 6 and cache[0]["latent"].shape == (8, 2, 4, 4)
    assert cache[5]["caption"] and cache[0]["shape"].shape == (2,)
    with pytest.raises(ReelkitError, match="other settings"):
        build_latent_cache(folder, num_clips=6, num_frames=9, size=32, shard_size=4, vae=vae)
    shards[1].write_bytes(b"junk")
    with pytest.raises(ReelkitError, match="corrupt latent cache shard"):
        LatentCache(folder)
    with pytest.raises(ReelkitError, match="not a latent cache"):
        LatentCache(tmp_path)


def test_a_cache_rendered_by_worker_processes_holds_the_same_clips(tmp_path, tiny_vae_dir):
    from safetensors import safe_open
    from safetensors.torch import load_file

    vae = CVVAE.from_pretrained(tiny_vae_dir)
    one = build_latent_cache(tmp_path / "one", num_clips=5, num_frames=5, size=32, shard_size=4, batch_size=2,
                             vae=vae)
    two = build_latent_cache(tmp_path / "two", num_clips=5, num_frames=5, size=32, shard_size=4, batch_size=2,
                             vae=vae, workers=2, device="cpu")
    for name in ("shard_00000.safetensors", "shard_00001.safetensors"):
        a, b = load_file(str(one / name)), load_file(str(two / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        with safe_open(str(one / name), "pt") as x, safe_open(str(two / name), "pt") as y:
            assert x.metadata() == y.metadata()


def test_config_errors_are_one_line(tmp_path, tiny_vae_dir, cli, one_line_error):
    bad = write_config(tmp_path, tiny_vae_dir, mixed_precision="fp8")
    assert "mixed_precision" in one_line_error(*cli("train", "t2v", "--config", bad)[::2])
    bad = write_config(tmp_path, tiny_vae_dir, learning_rat=1.0)
    assert "unknown config keys learning_rat" in one_line_error(*cli("train", "t2v", "--config", bad)[::2])
    bad = write_config(tmp_path, tiny_vae_dir, cache_workers=-1)
    assert "cache_workers must be >= 0" in one_line_error(*cli("train", "t2v", "--config", bad)[::2])


def test_two_cpu_processes_under_accelerate_launch(tmp_path, tiny_vae_dir):
    config = write_config(tmp_path, tiny_vae_dir, max_steps=2)
    result = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                             "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                             "-m", "reelkit", "train", "t2v", "--config", str(config)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "2 process(es)" in result.stdout
    assert (tmp_path / "run" / "model" / "model_index.json").is_file()


def test_adherence_is_judged_during_training_and_the_best_pipeline_kept(tmp_path, tiny_vae_dir):
    """eval_every: held-out prompts generated and read by the judge, logged per attribute and plotted; the
    best-reading EMA weights exported to output_dir/best; a resume logs no step twice."""
    run(write_config(tmp_path, tiny_vae_dir, eval_every=1, eval_prompts=2, eval_steps=1))
    run_dir = tmp_path / "run"
    lines = (run_dir / "adherence.csv").read_text().splitlines()
    assert lines[0] == "step,shape,color,motion,count,mean" and [int(x.split(",")[0]) for x in lines[1:]] == [1, 2, 3]
    assert all(0 <= float(v) <= 1 for line in lines[1:] for v in line.split(",")[1:])
    assert (run_dir / "adherence.png").stat().st_size > 0
    assert load_text_to_video(run_dir / "best", vae=CVVAE.from_pretrained(tiny_vae_dir)).transformer is not None
    run(write_config(tmp_path, tiny_vae_dir, eval_every=1, eval_prompts=2, eval_steps=1, max_steps=4))
    steps = [int(x.split(",")[0]) for x in (run_dir / "adherence.csv").read_text().splitlines()[1:]]
    assert steps == [1, 2, 3, 4]


def test_init_from_warm_starts_a_run_whose_folder_is_gone(tmp_path, tiny_vae_dir):
    first = run(write_config(tmp_path, tiny_vae_dir))
    trained = load_text_to_video(first, vae=CVVAE.from_pretrained(tiny_vae_dir)).transformer.state_dict()
    again = write_config(tmp_path, tiny_vae_dir, output_dir=str(tmp_path / "elsewhere"), init_from=str(first),
                         max_steps=1, learning_rate=1e-6)
    warm = load_text_to_video(run(again), vae=CVVAE.from_pretrained(tiny_vae_dir)).transformer.state_dict()
    assert max((warm[k] - v).abs().max().item() for k, v in trained.items()) < 1e-3
    wider = write_config(tmp_path, tiny_vae_dir, output_dir=str(tmp_path / "wider"), init_from=str(first),
                         model={"num_layers": 2, "num_attention_heads": 2, "attention_head_dim": 8})
    with pytest.raises(ReelkitError, match="its transformer does not match the config .*num_layers"):
        run(wider)


@pytest.mark.parametrize("change", [
    {"model": {"num_layers": 1, "num_attention_heads": 2, "attention_head_dim": 16}},  # width
    {"model": {"num_layers": 1, "num_attention_heads": 2, "attention_head_dim": 8, "patch_size": 4}},
    {"text_encoder": {"dim": 32, "num_layers": 1, "num_heads": 2}},
])
def test_a_resume_whose_architecture_changed_is_one_error_line(tmp_path, tiny_vae_dir, cli, one_line_error, change):
    run(write_config(tmp_path, tiny_vae_dir, max_steps=4, time_limit_minutes=0))  # leaves a checkpoint at step 1
    recorded = (tmp_path / "run" / "config.yaml").read_text()
    changed = write_config(tmp_path, tiny_vae_dir, max_steps=4, **change)
    line = one_line_error(*cli("train", "t2v", "--config", changed)[::2])
    assert "checkpoint does not match this config" in line
    assert (tmp_path / "run" / "config.yaml").read_text() == recorded  # the run folder is left as it was


def test_an_object_weighted_run_adds_coverage_to_its_cache(tmp_path, tiny_vae_dir):
    from reelkit.train.latent_cache import latent_coverage

    run(write_config(tmp_path, tiny_vae_dir, object_weight=4.0))
    cache = LatentCache(tmp_path / "cache")
    assert cache.has_coverage
    item = cache[3]
    assert item["coverage"].shape == item["latent"].shape[1:]  # (1+k, h, w): one weight per latent pixel
    assert 0 < item["coverage"].max() <= 1 and item["coverage"].min() >= 0
    seed = int(cache.tensors["seed"][3])
    torch.testing.assert_close(item["coverage"], latent_coverage(seed, 5, 32, tuple(item["latent"].shape[1:])),
                               atol=1e-3, rtol=0)
    with pytest.raises(ReelkitError, match="object_weight"):
        run(write_config(tmp_path, tiny_vae_dir, object_weight=-1.0))


def test_the_weighted_flow_matching_loss_is_the_plain_one_under_uniform_weights():
    from reelkit.objectives.flow_matching import flow_matching_loss

    def denoiser(noisy, timestep, input_ids, attention_mask):
        return noisy * 0.5

    latents, tokens = torch.randn(2, 4, 3, 4, 4), {"input_ids": None, "attention_mask": None}
    plain = flow_matching_loss(denoiser, latents, tokens, torch.Generator().manual_seed(0))
    uniform = flow_matching_loss(denoiser, latents, tokens, torch.Generator().manual_seed(0),
                                 weight=torch.full((2, 1, 3, 4, 4), 3.0))
    torch.testing.assert_close(plain, uniform)
    spot = torch.ones(2, 1, 3, 4, 4)
    spot[..., :2, :2] = 50.0
    assert flow_matching_loss(denoiser, latents, tokens, torch.Generator().manual_seed(0), weight=spot) != plain


def test_key_value_overrides_on_the_command_line(tmp_path, tiny_vae_dir, cli, one_line_error):
    """An ablation is one line: any config key, nested ones with a dot, values read as YAML (1e-3 a number)."""
    config = write_config(tmp_path, tiny_vae_dir, max_steps=5)
    code, out, err = cli("train", "t2v", "--config", config, "max_steps=2", "learning_rate=1e-3",
                         "model.attention_head_dim=4", f"output_dir={tmp_path / 'ablation'}")
    assert code == 0, err
    recorded = yaml.safe_load((tmp_path / "ablation" / "config.yaml").read_text())
    assert recorded["max_steps"] == 2 and recorded["learning_rate"] == 1e-3
    assert recorded["model"] == {"num_layers": 1, "num_attention_heads": 2, "attention_head_dim": 4}
    for bad, message in (("max_steps", "not key=value"), ("learning_rat=1", "unknown config keys learning_rat"),
                         ("max_steps=two", "max_steps"), ("model.x.y=1", "unknown|not a mapping|x")):
        line = one_line_error(*cli("train", "t2v", "--config", config, bad)[::2])
        assert any(part in line for part in message.split("|")), line


def test_object_weighting_can_end_after_some_steps(tmp_path, tiny_vae_dir, monkeypatch):
    import reelkit.train.t2v as recipe

    weighted = []
    original = recipe.flow_matching_loss

    def spy(*args, **kwargs):
        weighted.append(args[6] is not None if len(args) > 6 else kwargs.get("weight") is not None)
        return original(*args, **kwargs)

    monkeypatch.setattr(recipe, "flow_matching_loss", spy)
    run(write_config(tmp_path, tiny_vae_dir, object_weight=4.0, object_weight_steps=2))
    assert weighted == [True, True, False]


def test_object_weight_applies_only_below_its_noise_level():
    from reelkit.objectives.flow_matching import flow_matching_loss

    latents = torch.randn(4, 2, 1, 4, 4)
    weight = torch.zeros(4, 1, 1, 4, 4)
    weight[..., :2, :] = 50.0  # the "objects": the top half of every latent

    def loss(**options):
        return flow_matching_loss(lambda noisy, *rest: torch.zeros_like(noisy), latents, {"input_ids": None,
                                  "attention_mask": None}, torch.Generator().manual_seed(0), **options)

    plain, weighted = loss(), loss(weight=1 + weight)
    assert not torch.isclose(plain, weighted)
    # every sampled noise level lies above 1e-6: the weight is off and the loss is the plain one
    torch.testing.assert_close(loss(weight=1 + weight, weight_sigmas=(0.0, 1e-6)), plain)
    torch.testing.assert_close(loss(weight=1 + weight, weight_sigmas=(0.0, 1.0)), weighted)


@pytest.mark.parametrize("value", [0.0, 1.5, -0.2])
def test_object_weight_noise_level_must_lie_in_the_unit_interval(value):
    from reelkit.train.t2v import T2VTrainConfig

    with pytest.raises(ReelkitError, match="object_weight_max_sigma must lie in"):
        T2VTrainConfig(object_weight_max_sigma=value)


@pytest.mark.parametrize("added, layer", [({"pooled_text": True}, "text_pool"),
                                          ({"refine_channels": 4}, "refine")])
def test_a_warm_start_may_add_a_zero_started_layer_and_starts_as_the_loaded_model(tmp_path, tiny_vae_dir, added,
                                                                                 layer):
    from reelkit.pipelines.text_to_video import tiny_pipeline
    from reelkit.train.t2v import T2VTrainConfig, build_components

    source = tiny_pipeline(open_gates=True)
    source.save_pretrained(tmp_path / "source")
    model = dict(num_layers=2, num_attention_heads=2, attention_head_dim=8)
    config = T2VTrainConfig(model={**model, **added}, text_encoder=dict(dim=16, num_layers=1, num_heads=2),
                            size=32, init_from=str(tmp_path / "source"))
    transformer, text_encoder, _ = build_components(config)
    assert getattr(transformer, layer) is not None
    latents, text = torch.randn(1, 8, 2, 4, 4), torch.randn(1, 24, 16)
    with torch.no_grad():
        torch.testing.assert_close(transformer.eval()(latents, torch.tensor([500.0]), text).sample,
                                   source.transformer(latents, torch.tensor([500.0]), text).sample)
        for parameter in getattr(transformer, layer).parameters():  # once trained, the new layer changes the output
            parameter.normal_()
        assert not torch.allclose(transformer(latents, torch.tensor([500.0]), text).sample,
                                  source.transformer(latents, torch.tensor([500.0]), text).sample)


def test_shape_twins_differ_from_their_scene_only_in_shape():
    from reelkit.data.world import random_scene, shape_twin

    for seed in range(20):
        (scene, _), (twin, caption) = random_scene(seed), shape_twin(seed)
        assert twin.background == scene.background and caption
        for a, b in zip(scene.objects, twin.objects, strict=True):
            assert a.shape != b.shape and (a.color, a.motion, a.start, a.end, a.radius) == (
                b.color, b.motion, b.start, b.end, b.radius)
            assert b.shape in caption or any(word in caption for word in ("ball", "disc", "block", "rhombus", "plus",
                                                                          "box", "cube", "ring", "dot", "x"))


def test_a_run_with_shape_twins_pairs_each_twin_with_its_clip_under_one_noise(tmp_path, tiny_vae_dir, monkeypatch):
    import reelkit.train.t2v as recipe

    seen = []
    original = recipe.flow_matching_loss

    def spy(denoiser, latents, tokens, *args, **kwargs):
        seen.append((len(latents), args[-1]))
        return original(denoiser, latents, tokens, *args, **kwargs)

    monkeypatch.setattr(recipe, "flow_matching_loss", spy)
    run(write_config(tmp_path, tiny_vae_dir, twin_clips=4, twin_pairs=2, twin_cache=str(tmp_path / "twins")))
    assert seen == [(4 + 2 * 2, 2)] * 3  # the batch, 2 clips and their 2 twins, paired
    twins = LatentCache(tmp_path / "twins")
    assert len(twins) == 4 and twins.manifest["shape_twins"] is True
    assert twins.captions[0] != LatentCache(tmp_path / "cache").captions[0]


def test_paired_samples_share_their_noise():
    from reelkit.objectives.flow_matching import flow_matching_loss

    inputs = []
    latents = torch.randn(4, 2, 1, 4, 4)

    def denoiser(noisy, timestep, *rest):
        inputs.append((noisy, timestep))
        return torch.zeros_like(noisy)

    latents[3] = latents[1]  # the twin of sample 1 is the same clip here: same noise and level, same input
    flow_matching_loss(denoiser, latents, {"input_ids": None, "attention_mask": None},
                       torch.Generator().manual_seed(0), paired=2)
    noisy, timestep = inputs[0]
    assert torch.equal(noisy[3], noisy[1]) and timestep[3] == timestep[1] and timestep[2] == timestep[0]


def test_a_shape_probe_run_logs_the_probe_and_exports_only_the_pipeline(tmp_path, tiny_vae_dir):
    model_dir = run(write_config(tmp_path, tiny_vae_dir, shape_probe=1.0, shape_probe_min_sigma=0.0,
                                 caption_dropout=0.0))
    header, *rows = (tmp_path / "run" / "loss.csv").read_text().splitlines()
    assert header.split(",")[:3] == ["step", "loss", "shape_probe"] and len(rows) == 3
    assert LatentCache(tmp_path / "cache").has_coverage  # the probe pools over the objects
    pipe = load_text_to_video(model_dir)  # the probe stays behind: the exported model is a plain VideoDiT
    assert not any("probe" in name for name, _ in pipe.transformer.named_parameters())


def test_the_shape_probe_reads_the_features_on_the_object_only():
    from reelkit.models.dit import VideoDiT
    from reelkit.models.text import WorldTextEncoder
    from reelkit.train.t2v import Denoiser

    transformer = VideoDiT(num_layers=1, num_attention_heads=2, attention_head_dim=8, text_dim=16, patch_size=2)
    text_encoder = WorldTextEncoder(dim=16, num_layers=1, num_heads=2)
    denoiser = Denoiser(transformer, text_encoder, shape_probe=True)
    features = torch.randn(2, 2 * 4 * 4, 16, requires_grad=True)  # (B, T*S, D): 2 frames of 4x4 tokens
    denoiser.features = features
    coverage = torch.zeros(2, 2, 8, 8)  # (B, T, H, W) latent pixels; the patch is 2
    coverage[:, 0, :2, :2] = 1  # the object covers the first token of the first frame
    loss = denoiser.shape_probe_loss(coverage, torch.tensor([3, 1]), torch.tensor([True, False]))
    loss.backward()
    touched = features.grad.abs().sum(-1)  # (B, T*S)
    assert touched[0, 0] > 0 and touched[0, 1:].sum() == 0 and touched[1].sum() == 0
    none = denoiser.shape_probe_loss(coverage, torch.tensor([3, 1]), torch.tensor([False, False]))
    assert none.item() == 0.0


@pytest.mark.parametrize("override", [{"shape_probe": -1.0}, {"shape_probe_min_sigma": 1.0}])
def test_shape_probe_settings_out_of_range_are_refused(override):
    from reelkit.train.t2v import T2VTrainConfig

    with pytest.raises(ReelkitError, match="shape_probe"):
        T2VTrainConfig(**override)


def test_a_compiled_run_saves_and_exports_the_same_keys_as_a_plain_one(tmp_path, tiny_vae_dir):
    from safetensors.torch import load_file

    folders = {name: tmp_path / name for name in ("plain", "compiled")}
    for folder in folders.values():
        folder.mkdir()
    plain = run(write_config(folders["plain"], tiny_vae_dir, max_steps=1))
    compiled = run(write_config(folders["compiled"], tiny_vae_dir, max_steps=1, compile=True))
    weights = [load_file(str(folder / "transformer" / "diffusion_pytorch_model.safetensors"))
               for folder in (plain, compiled)]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.isfinite(tensor).all() for tensor in weights[1].values())
    pipe = load_text_to_video(compiled)
    pipe.set_progress_bar_config(disable=True)
    assert pipe("a red circle", num_frames=5, height=32, width=32, num_inference_steps=1).frames.shape == (
        1, 3, 5, 32, 32)


def test_repa_adds_targets_to_the_cache_and_aligns_a_block(tmp_path, tiny_vae_dir):
    """REPA: the encoder's features of each cached clip are stored beside its shard, the run logs the alignment
    loss, and the projector is not exported (the pipeline loads as a plain one)."""
    from reelkit.train.representation import encoder_features, latent_frame_indices

    model_dir = run(write_config(tmp_path, tiny_vae_dir, repa=0.5, repa_block=0, max_steps=4))
    assert latent_frame_indices(17) == [0, 4, 8, 12, 16] and latent_frame_indices(5) == [0, 4]
    cache = LatentCache(tmp_path / "cache")
    item = cache[2]
    assert item["repa"].shape[:2] == (2, 128)  # (1+k, C, h, w): one map per latent frame of a 5-frame clip
    from reelkit.data.world import render_clip
    from reelkit.rewards.base import load_reward

    seed = int(cache.tensors["seed"][2])
    expected = encoder_features(load_reward("demo-image"), render_clip(seed, 5, 32).video[None])[0]
    torch.testing.assert_close(item["repa"], expected.half().float(), atol=2e-2, rtol=1e-2)
    rows = (tmp_path / "run" / "loss.csv").read_text().splitlines()
    assert rows[0].split(",")[:3] == ["step", "loss", "repa"]
    assert all(0 <= float(row.split(",")[2]) <= 2 for row in rows[1:])
    assert load_text_to_video(model_dir).transformer is not None


@pytest.mark.parametrize(("change", "message"), [({"repa": -1.0}, "repa must lie in"),
                                                  ({"repa": 0.5, "repa_block": 7}, "repa_block must name one")])
def test_bad_repa_settings_are_one_line_errors(tmp_path, tiny_vae_dir, change, message):
    with pytest.raises(ReelkitError, match=message):
        run(write_config(tmp_path, tiny_vae_dir, **change))


def test_contrastive_flow_matching_pushes_away_from_the_previous_sample_or_the_twin():
    from reelkit.objectives.flow_matching import flow_matching_loss

    latents, tokens = torch.randn(6, 2, 1, 4, 4), {"input_ids": None, "attention_mask": None}

    def denoiser(noisy, timestep, *rest):
        return torch.zeros_like(noisy)

    def velocities(paired):  # the draws flow_matching_loss makes, in its order
        generator = torch.Generator().manual_seed(0)
        torch.randn(len(latents), generator=generator)
        noise = torch.randn(latents.shape, generator=generator)
        if paired:
            noise[-paired:] = noise[-2 * paired:-paired]
        return noise - latents

    target = velocities(0)
    plain = flow_matching_loss(denoiser, latents, tokens, torch.Generator().manual_seed(0))
    contrastive = flow_matching_loss(denoiser, latents, tokens, torch.Generator().manual_seed(0), contrastive=0.1)
    torch.testing.assert_close(contrastive, plain - 0.1 * target.roll(1, 0).pow(2).mean())
    target = velocities(2)  # samples 2, 3 are clips whose twins are samples 4, 5: each pair is the other's negative
    negative = target[[5, 0, 4, 5, 2, 3]]  # the plain samples: the previous one (sample 0: the last)
    paired = flow_matching_loss(denoiser, latents, tokens, torch.Generator().manual_seed(0), paired=2,
                                contrastive=0.1)
    torch.testing.assert_close(paired, target.pow(2).mean() - 0.1 * negative.pow(2).mean())


@pytest.mark.parametrize("value", [-0.1, 1.0])
def test_contrastive_weight_out_of_range_is_refused(tmp_path, tiny_vae_dir, value):
    with pytest.raises(ReelkitError, match="contrastive must lie in"):
        run(write_config(tmp_path, tiny_vae_dir, contrastive=value))
