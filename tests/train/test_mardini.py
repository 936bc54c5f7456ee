"""The MarDini recipe: stages train what they name, losses count the masked frames only, runs resume."""

import pytest
import torch
import yaml

from reelkit.errors import ReelkitError
from reelkit.mardini.masking import reference_mask
from reelkit.objectives.masked import masked_mse
from reelkit.train.mardini import MarDini, MarDiniTrainConfig, build_models, run, stage_lr

TINY = {"cache_clips": 6, "num_frames": 9, "size": 32, "batch_size": 3, "save_every": 3, "log_every": 1,
        "threads": 1, "warmup_steps": 1,
        "planner": {"num_layers": 1, "num_attention_heads": 2, "attention_head_dim": 8},
        "generator": {"num_layers": 1, "num_attention_heads": 2, "attention_head_dim": 8},
        "stages": [{"name": "gen", "train": "generator", "steps": 2, "frames": [5]},
                   {"name": "plan", "train": "planner", "steps": 1, "frames": [5]},
                   {"name": "joint", "train": "joint", "steps": 2, "keep_ratio": [0.1, 0.5], "frames": [5, 9]}]}


def write_config(tmp_path, **changes):
    values = {**TINY, "output_dir": str(tmp_path / "run"), "latent_cache": str(tmp_path / "cache"), **changes}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def test_loss_counts_only_the_frames_to_generate():
    target = torch.zeros(1, 8, 5, 2, 2)
    generate = ~reference_mask(5, [0, 4])[:, None, :, None, None]
    prediction = target.clone()
    prediction[:, :, 0] = 5.0  # a known frame: ignored
    assert masked_mse(prediction, target, generate) == 0
    prediction[:, :, 2] = 1.0
    assert masked_mse(prediction, target, generate) == pytest.approx(1 / 3)


@pytest.mark.parametrize(("train", "trained", "frozen"), [("generator", "generator", "planner"),
                                                         ("planner", "planner", "generator")])
def test_warm_up_stages_train_one_network(tmp_path, train, trained, frozen):
    config = MarDiniTrainConfig(**{**TINY, "stages": [{"name": "s", "train": train, "steps": 1}]})
    model = MarDini(*build_models(config))
    B, T = 2, 5
    loss = model(torch.randn(B, 8, T, 4, 4), torch.randn(B, 8, T, 2, 2), reference_mask(T, [0], B), train,
                 torch.rand(B), torch.randn(B, 8, T, 4, 4), torch.zeros(B, dtype=torch.bool))
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in getattr(model, trained).parameters())
    assert all(p.grad is None for p in getattr(model, frozen).parameters())


def test_learning_rate_warms_up_and_decays_in_every_stage():
    config = MarDiniTrainConfig(**{**TINY, "warmup_steps": 2, "stages": [
        {"name": "a", "train": "generator", "steps": 10}, {"name": "b", "train": "joint", "steps": 10}]})
    factors = [stage_lr(config, step) for step in range(20)]
    assert factors[0] < factors[1] <= 1.0 and factors[9] < 0.2
    assert factors[10] < factors[11] and factors[10] < 1.0  # stage b warms up again


def test_recipe_trains_every_stage_writes_a_loadable_pipeline_and_resumes(tmp_path):
    from reelkit.pipelines.masked_video import load_masked_video

    config = write_config(tmp_path)
    model_dir = run(config)
    log = (tmp_path / "run" / "loss.csv").read_text().splitlines()
    assert log[0].startswith("step,stage,loss") and [line.split(",")[1] for line in log[1:]] == [
        "gen", "gen", "plan", "joint", "joint"]
    pipe = load_masked_video(model_dir)
    pipe.set_progress_bar_config(disable=True)
    out = pipe.interpolate(torch.zeros(3, 32, 32), torch.ones(3, 32, 32) * 0.5, 5, num_inference_steps=2)
    assert out.frames.shape == (1, 3, 5, 32, 32) and torch.isfinite(out.frames).all()

    longer = dict(TINY["stages"][2], steps=4)  # the last stage extended: the run goes on from its checkpoint
    run(write_config(tmp_path, stages=[*TINY["stages"][:2], longer]))
    steps = [int(line.split(",")[0]) for line in (tmp_path / "run" / "loss.csv").read_text().splitlines()[1:]]
    assert steps == [1, 2, 3, 4, 5, 6, 7]


@pytest.mark.parametrize(("changes", "message"), [
    ({"stages": []}, "no stages"),
    ({"stages": [{"name": "x", "train": "vae", "steps": 1}]}, "train must be one of"),
    ({"stages": [{"name": "x", "train": "joint", "steps": 1, "keep_ratio": [0.5, 0.2]}]}, "keep_ratio"),
    ({"stages": [{"name": "x", "train": "joint", "steps": 1, "frames": [17]}]}, "exceed"),
    ({"stages": [{"name": "x", "train": "joint", "steps": 0}]}, "steps >= 1"),
    ({"batch": 3}, "unknown config keys"),
])
def test_config_mistakes_are_one_line_errors(tmp_path, changes, message):
    with pytest.raises(ReelkitError, match=message):
        run(write_config(tmp_path, **changes))
