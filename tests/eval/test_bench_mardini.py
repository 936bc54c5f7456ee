import math

import pytest

from reelkit.eval.bench import mardini as suite
from reelkit.eval.bench import run_suite
from reelkit.pipelines.masked_video import tiny_masked_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def tiny_suite(configure, tiny_judge, tmp_path):
    run = tmp_path / "runs" / "mardini"
    run.mkdir(parents=True)
    (run / "loss.csv").write_text("step,stage,loss,lr,seconds_per_step\n" + "".join(
        f"{s},generator_warmup,{2 / s:.4f},1e-4,0.1\n" for s in range(1, 21)) + "21,joint_task,0.1,1e-4,0.1\n")
    configure(suite, LOADER=tiny_masked_pipeline, JUDGE=tiny_judge, SIZE=32, STEPS=1, CLIPS={True: 3, False: 3},
              REAL_WINDOWS={True: 1, False: 1}, EFFICIENCY_SIZES={True: (32,), False: (32,)},
              RUNS={"with_identity_attention": str(run), "without_identity_attention": str(tmp_path / "absent")})


def test_rows_hold_the_figures_the_issue_asks_for(tiny_suite, tmp_path):
    report = run_suite("mardini", quick=True, repeats=1, report_path=tmp_path / "mardini.json")
    rows = {(r["task"], r.get("dataset"), r["method"]): r for r in report["rows"]}
    for method in ("mardini", "generator_only", "linear_blend", "optical_flow", "vae_ceiling"):
        row = rows["interpolation", "demo_world", method]
        assert row["psnr_db"] > 0 and 0 < row["ssim"] <= 1 and row["fvd_demo"] >= 0
    for method in ("mardini", "generator_only", "real_clips", "still_image"):
        row = rows["image_to_video", "demo_world", method]
        assert 0 <= row["shape_accuracy"] <= 1 and 0 < row["motion_confidence"] <= 1
    asymmetric, symmetric = rows["efficiency", None, "asymmetric"], rows["efficiency", None, "symmetric"]
    assert symmetric["planner_tokens"] == 4 * asymmetric["planner_tokens"]
    assert asymmetric["latency_s"] > 0 and asymmetric["peak_mem_bytes"] > 0
    assert math.isclose(asymmetric["speedup_vs_symmetric"], symmetric["latency_s"] / asymmetric["latency_s"])
    training = rows["training", None, "with_identity_attention"]
    assert training["steps"] == 20 and training["loss_first"] > training["loss_last"]
    assert any("without_identity_attention" in m for m in report["settings"]["missing"])
    assert (tmp_path / "mardini_identity_attention.png").is_file()


def test_real_clip_rows_when_the_shared_clips_are_present(tiny_suite, shared_clips):
    report = run_suite("mardini", quick=True, repeats=1)
    real = [r for r in report["rows"] if r.get("dataset") == "real_clips" and r["task"] == "interpolation"]
    assert {r["method"] for r in real} == {"mardini", "generator_only", "linear_blend", "optical_flow", "vae_ceiling"}
    assert all(r["clips"] == len(shared_clips) and r["psnr_db"] > 0 for r in real)
