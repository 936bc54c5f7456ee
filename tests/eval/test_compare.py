import json

import numpy as np
import pytest

from reelkit.eval.compare import bootstrap_interval, paired_difference, parse_model_spec, summarise


def test_the_bootstrap_interval_holds_the_mean_and_narrows_with_more_prompts():
    rng = np.random.default_rng(0)
    few, many = rng.random(16) < 0.3, rng.random(1024) < 0.3
    low, high = bootstrap_interval(few)
    assert low <= few.mean() <= high
    wide, narrow = high - low, np.subtract(*bootstrap_interval(many)[::-1])
    assert narrow < wide / 3  # 64x the prompts: about 8x narrower
    assert bootstrap_interval([float("nan"), 1.0, 1.0]) == (1.0, 1.0)  # open attributes do not count
    assert all(np.isnan(bootstrap_interval([float("nan")])))


def test_a_paired_difference_is_zero_for_the_same_scores_and_clear_for_a_real_gain():
    rng = np.random.default_rng(1)
    a = [{"shape": float(v), "color": 1.0, "motion": float("nan"), "count": 1.0} for v in rng.random(200) < 0.2]
    b = [dict(s, shape=1.0 if i % 2 else s["shape"]) for i, s in enumerate(a)]  # half the prompts now right
    same = paired_difference(a, a)
    assert same["shape"] == (0.0, 0.0, 0.0) and all(np.isnan(same["motion"]))
    mean, low, high = paired_difference(a, b)["shape"]
    gain = np.mean([y["shape"] - x["shape"] for x, y in zip(a, b, strict=True)])
    assert 0 < low <= mean <= high and mean == pytest.approx(gain)
    row = summarise(b, reference=a)
    assert row["shape"]["diff"] == mean and row["color"]["diff"] == 0.0
    assert "diff" not in summarise(a)["shape"]


@pytest.mark.parametrize("spec", ["@5", "teacher@", "teacher@0", "teacher@x"])
def test_a_model_spec_is_model_or_model_at_steps(spec):
    from reelkit.errors import ReelkitError

    assert parse_model_spec("teacher", 25) == ("teacher", 25)
    assert parse_model_spec("runs/a@b/model@8", 25) == ("runs/a@b/model", 8)
    with pytest.raises(ReelkitError, match="MODEL@STEPS"):
        parse_model_spec(spec, 25)


def test_eval_compare_reads_models_on_the_same_prompts_and_writes_json(tmp_path, cli):
    out = tmp_path / "compare.json"
    code, stdout, err = cli("eval", "compare", "teacher@1", "teacher@2", "--prompts", "2", "--json", out)
    assert code == 0, err
    figures = json.loads(out.read_text())
    assert figures["prompts"] == 2 and [r["steps"] for r in figures["rows"]] == [1, 2]
    first, second = figures["rows"]
    assert "diff" not in first["color"] and {"diff", "diff_low", "diff_high"} <= set(second["color"])
    assert first["color"]["low"] <= first["color"]["mean"] <= first["color"]["high"]
    assert "teacher@2" in stdout


@pytest.mark.parametrize(("args", "message"), [
    (["runs/no_such_model"], "no_such_model"),
    (["teacher@x"], "MODEL@STEPS"),
    (["teacher", "--prompts", "0"], "--prompts must lie in"),
    (["teacher", "--steps", "0"], "--steps must be"),
    (["teacher", "--guidance", "nan"], "--guidance"),
    (["teacher", "--json", "figures.txt"], "must end in .json"),
])
def test_eval_compare_bad_input_is_one_error_line(tmp_path, cli, one_line_error, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    line = one_line_error(*cli("eval", "compare", *args)[::2])
    assert message in line
