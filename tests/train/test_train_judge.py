import yaml

from reelkit.models.judge import load_judge
from reelkit.train.judge import run


def test_trains_a_judge_that_loads_and_resumes(tmp_path, capsys):
    config = {"output_dir": str(tmp_path / "run"), "model": {"channels": [4, 8, 8, 16], "feature_dim": 16},
              "num_frames": 5, "size": 32, "batch_size": 4, "max_steps": 2, "warmup_steps": 1, "save_every": 1,
              "log_every": 1, "num_workers": 0, "mixed_precision": "bf16"}
    path = tmp_path / "judge.yaml"
    path.write_text(yaml.safe_dump(config))
    judge = load_judge(run(path))
    assert judge.config.num_frames == 5 and not judge.training
    run(path, max_steps=3)
    assert "resumed from" in capsys.readouterr().out
