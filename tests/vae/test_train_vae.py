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


@pytest.mark.parametrize("values, message", [
    ({"stage": "audio"}, "stage must be"),
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

    for name in ("image_vae", "cvvae"):
        config = load_config(VaeTrainConfig, Path(__file__).parents[2] / "configs" / f"{name}.yaml")
        assert config.stage == name


def test_two_cpu_processes_under_accelerate_launch(tmp_path):
    config = image_stage(tmp_path, steps=2)
    result = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                             "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                             "-m", "reelkit", "train", "vae", "--config", str(config)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "on 2 process(es)" in result.stdout
    assert load_image_vae(tmp_path / "image_run" / "model").config.latent_channels == 8
