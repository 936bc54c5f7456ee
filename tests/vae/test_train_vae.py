import json
import subprocess
import sys

import pytest
import yaml

from reelkit.errors import ReelkitError
from reelkit.train.vae import VaeTrainConfig, run
from reelkit.vae import load_cvvae, load_image_vae

TINY_MODEL = {"block_out_channels": [8, 8, 8, 8], "norm_num_groups": 4}


def write_config(path, **values):
    path.write_text(yaml.safe_dump(values))
    return path


def image_stage(tmp_path, steps=2, **extra):
    return write_config(tmp_path / "image.yaml", stage="image_vae", output_dir=str(tmp_path / "image_run"),
                        model=TINY_MODEL, num_frames=1, size=32, batch_size=2, max_steps=steps, warmup_steps=1,
                        save_every=2, log_every=1, **extra)


def test_image_stage_trains_checkpoints_resumes_and_exports(tmp_path, capsys):
    model_dir = run(image_stage(tmp_path))
    vae = load_image_vae(model_dir)
    assert vae.config.block_out_channels == [8, 8, 8, 8] and vae.config.scaling_factor != 1.0
    state = json.loads((tmp_path / "image_run" / "checkpoint" / "trainer_state.json").read_text())
    assert state["step"] == 2
    run(image_stage(tmp_path, steps=4))
    out = capsys.readouterr().out
    resumed = out.split("resumed from")[1]
    assert resumed.startswith(" ") and "at step 2" in resumed and "step 3 " in resumed and "step 1 " not in resumed
    assert json.loads((tmp_path / "image_run" / "checkpoint" / "trainer_state.json").read_text())["step"] == 4


def test_cvvae_stage_with_regularisation_and_gan(tmp_path, capsys):
    image_dir = run(image_stage(tmp_path))
    config = write_config(tmp_path / "cv.yaml", stage="cvvae", output_dir=str(tmp_path / "cv_run"),
                          image_vae=str(image_dir), num_frames=5, size=32, batch_size=1, max_steps=2, warmup_steps=1,
                          log_every=1, disc_weight=0.5, mapping="average")
    model_dir = run(config)
    out = capsys.readouterr().out
    assert " reg " in out and " gan " in out and " disc " in out
    cvvae = load_cvvae(model_dir)
    assert cvvae.config.scaling_factor == load_image_vae(image_dir).config.scaling_factor  # same latent space


def test_resuming_with_a_different_architecture_is_a_clear_error(tmp_path):
    run(image_stage(tmp_path))
    changed = image_stage(tmp_path, steps=4)
    values = yaml.safe_load(changed.read_text())
    values["model"] = {"block_out_channels": [16, 16, 16, 16], "norm_num_groups": 4}
    changed.write_text(yaml.safe_dump(values))
    with pytest.raises(ReelkitError, match="does not match this config"):
        run(changed)


def test_init_from_warm_starts_a_fresh_run_from_committed_weights(tmp_path, capsys):
    """A run folder that is gone (a new machine) starts from the last exported weights, not from scratch."""
    first = run(image_stage(tmp_path, object_weight=3.0, mixed_precision="bf16"))
    exported = load_image_vae(first)
    fresh = tmp_path / "elsewhere"
    model_dir = main_run = run(image_stage(tmp_path, steps=1), output_dir=str(fresh), init_from=str(first))
    assert main_run == fresh / "model"
    warm = load_image_vae(model_dir)
    cold = load_image_vae(run(image_stage(tmp_path, steps=1, seed=1), output_dir=str(tmp_path / "cold")))
    start = exported.state_dict()
    # one small step away from the committed weights, far from a fresh initialisation
    drift = lambda model: max((model.state_dict()[k] - v).abs().max().item() for k, v in start.items())  # noqa: E731
    assert drift(warm) < drift(cold) / 5


def test_init_from_another_class_or_shape_is_a_clear_error(tmp_path):
    cv_config = write_config(tmp_path / "cv.yaml", stage="cvvae", output_dir=str(tmp_path / "cv_run"),
                             image_vae=None, num_frames=5, size=32, batch_size=1, max_steps=1)
    image_dir = run(image_stage(tmp_path))
    with pytest.raises(ReelkitError, match="is a AutoencoderKL checkpoint, not a CVVAE one"):
        run(cv_config, init_from=str(image_dir))
    wider = image_stage(tmp_path, steps=1)
    values = yaml.safe_load(wider.read_text())
    values.update(model={"block_out_channels": [16, 16, 16, 16], "norm_num_groups": 4},
                  output_dir=str(tmp_path / "wider"), init_from=str(image_dir))
    wider.write_text(yaml.safe_dump(values))
    with pytest.raises(ReelkitError, match="does not match the config's architecture: block_out_channels"):
        run(wider)
    with pytest.raises(ReelkitError, match="no config.json"):
        run(image_stage(tmp_path, steps=1), output_dir=str(tmp_path / "x"), init_from=str(tmp_path))


def test_object_weights_lift_the_objects_and_their_edges():
    import torch

    from reelkit.data.datasets import VaeTrainStream
    from reelkit.objectives.reconstruction import object_weights, weighted_reconstruction

    video, coverage = next(iter(VaeTrainStream(num_frames=1, size=32, photo_fraction=0.0, with_coverage=True)))
    assert video.shape == (3, 1, 32, 32) and coverage.shape == (1, 1, 32, 32)
    assert 0 < coverage.mean() < 0.5 and coverage.max() == 1.0
    weight = object_weights(coverage[None], 4.0)  # (1, 1, 1, 32, 32)
    assert weight.min() == 1.0 and weight.max() == 5.0
    assert (weight > 1).sum() > (coverage > 0).sum()  # one pixel around the objects too
    target = video[None]
    off_object = target + 0.1 * (weight == 1)  # an error on the background only
    on_object = target + 0.1 * (weight > 1)
    assert weighted_reconstruction(on_object, target, weight, 1.0)[0] > \
        weighted_reconstruction(on_object, target, None, 1.0)[0]
    assert weighted_reconstruction(off_object, target, weight, 1.0)[0] < \
        weighted_reconstruction(off_object, target, None, 1.0)[0]
    photo, blank = next(iter(VaeTrainStream(num_frames=1, size=32, photo_fraction=1.0, with_coverage=True)))
    assert torch.count_nonzero(blank) == 0


@pytest.mark.parametrize("values, message", [
    ({"stage": "audio"}, "stage must be"),
    ({"mixed_precision": "fp8"}, "mixed_precision must be"),
    ({"object_weight": -1.0}, "object_weight must be"),
    ({"mapping": "median"}, "mapping must be"),
    ({"learning_rat": 1e-3}, "unknown config keys learning_rat"),
])
def test_bad_configs_are_refused(tmp_path, values, message):
    with pytest.raises(ReelkitError, match=message):
        run(write_config(tmp_path / "bad.yaml", **values))


def test_missing_or_broken_config_files(tmp_path):
    with pytest.raises(ReelkitError, match="no such config"):
        run(tmp_path / "absent.yaml")
    (tmp_path / "broken.yaml").write_text("stage: [image_vae")
    with pytest.raises(ReelkitError, match="not valid YAML"):
        run(tmp_path / "broken.yaml")


def test_shipped_configs_parse():
    from pathlib import Path

    from reelkit.train.common import load_config

    for name, stage in (("image_vae", "image_vae"), ("cvvae", "cvvae"), ("image_vae_f4", "image_vae"),
                        ("cvvae_f4", "cvvae")):
        config = load_config(VaeTrainConfig, Path(__file__).parents[2] / "configs" / f"{name}.yaml")
        assert config.stage == stage


def test_two_cpu_processes_under_accelerate_launch(tmp_path):
    config = image_stage(tmp_path, steps=2)
    result = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                             "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                             "-m", "reelkit", "train", "vae", "--config", str(config)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "on 2 process(es)" in result.stdout
    assert load_image_vae(tmp_path / "image_run" / "model").config.latent_channels == 8
