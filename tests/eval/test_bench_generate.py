import json

import pytest

from reelkit.eval.bench import generate as suite
from reelkit.eval.bench import run_suite, write_report
from reelkit.pipelines.text_to_video import tiny_pipeline


@pytest.fixture
def tiny_suite(configure, tiny_judge):
    configure(suite, PIPELINE=tiny_pipeline, JUDGE=tiny_judge, FRAMES=5, SIZE=32, BATCH=4,
              NUM_PROMPTS={True: 6, False: 6}, STEPS={True: (1, 2), False: (1, 2)})


def test_rows_hold_the_figures_the_issue_asks_for(tiny_suite, tmp_path):
    report = run_suite("generate", quick=True, repeats=1, report_path=tmp_path / "generate.json")
    write_report(report, tmp_path / "generate.json")
    rows = {row["method"]: row for row in json.loads((tmp_path / "generate.json").read_text())["rows"]}
    assert list(rows) == ["real_clips", "vae_ceiling", "teacher_1", "teacher_2", "teacher_2_from_noise_0.5"]
    assert 0 <= rows["teacher_2_from_noise_0.5"]["adherence_shape"] <= 1
    for attribute in ("shape", "color", "motion", "count"):  # what the VAE lets a generator reach
        assert 0 <= rows["vae_ceiling"][f"adherence_{attribute}"] <= 1
        assert 0 <= rows["vae_ceiling"][f"judge_{attribute}"] <= 1
    assert rows["vae_ceiling"]["psnr_db"] > 0
    for name in ("teacher_1", "teacher_2"):
        assert rows[name]["latency_s"] > 0 and rows[name]["fvd_demo"] >= 0
        for attribute in ("shape", "color", "motion"):
            assert 0 <= rows[name][f"adherence_{attribute}"] <= 1
    assert {"judge_accuracy_shape", "judge_accuracy_color", "judge_accuracy_motion"} <= set(rows["real_clips"])
    assert (tmp_path / "generate_sheet.png").is_file()
    assert report["settings"]["prompts"] == 6 and len(report["settings"]["contact_sheet_prompts"]) == 6


def test_held_out_prompts_are_fixed_and_parse():
    from reelkit.data.captions import parse_prompt

    prompts = suite.heldout_prompts(64)
    assert prompts == suite.heldout_prompts(64) and len(set(prompts)) == 64
    assert all(parse_prompt(p).objects for p in prompts)
