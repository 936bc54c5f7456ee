import json

import pytest

from reelkit.eval.bench import SUITES, run_suite, write_report
from reelkit.eval.bench import rehash as suite
from reelkit.pipelines.text_to_video import tiny_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def tiny_suite(configure, tiny_judge):
    configure(suite, PIPELINE=lambda: tiny_pipeline(open_gates=True), JUDGE=tiny_judge, FRAMES=5, SIZE=32,
              NUM_PROMPTS={True: 2, False: 2}, CALIBRATION_PROMPTS={True: 1, False: 1}, STEPS={True: 8, False: 8},
              BUDGETS={True: (3, 5), False: (3,)})


def test_every_budget_gives_a_step_rehash_and_a_uniform_row(tiny_suite, tmp_path):
    assert "rehash" in SUITES
    report = run_suite("rehash", quick=True, repeats=1, report_path=tmp_path / "rehash.json")
    write_report(report, tmp_path / "rehash.json")
    rows = {row["method"]: row for row in json.loads((tmp_path / "rehash.json").read_text())["rows"]}
    assert list(rows) == ["full", "step_rehash_3", "uniform_reuse_3", "step_rehash_5", "uniform_reuse_5"]
    assert rows["full"]["psnr_db"] == suite.MAX_PSNR and rows["full"]["full_steps"] == 8
    for name, row in rows.items():
        for figure in ("latency_s", "speedup", "denoise_speedup", "full_steps", "flops", "psnr_db", "ssim",
                       "adherence_shape"):
            assert figure in row, (name, figure)
        if name != "full":
            assert row["full_steps"] == len(row["key_steps"]) == int(name.rsplit("_", 1)[1])
            assert row["flops"] < rows["full"]["flops"] and row["psnr_db"] < suite.MAX_PSNR
    assert rows["uniform_reuse_3"]["key_steps"] == [0, 3, 5]
    settings = report["settings"]
    assert settings["deep_blocks"] == ["transformer_blocks.1"] and settings["budgets"] == [3, 5]
    assert len(settings["targets"]["versus_uniform"]) == 2
    assert not set(settings["calibration_prompts"]) & set(settings["evaluation_prompts"])


def test_targets_read_the_rows():
    rows = [{"method": "full", "speedup": 1.0, "psnr_db": 100.0, "full_steps": 50},
            {"method": "step_rehash_10", "speedup": 2.0, "psnr_db": 31.0, "full_steps": 10},
            {"method": "uniform_reuse_10", "speedup": 2.0, "psnr_db": 30.0, "full_steps": 10},
            {"method": "step_rehash_5", "speedup": 3.0, "psnr_db": 25.0, "full_steps": 5},
            {"method": "uniform_reuse_5", "speedup": 3.0, "psnr_db": 26.0, "full_steps": 5}]
    result = suite.targets(rows)
    assert result["speedup_at_target_psnr"] == 2.0 and result["speedup_target_met"]
    assert [v["gain_db"] for v in result["versus_uniform"]] == [1.0, -1.0]
    assert not result["beats_uniform_at_every_budget"]
