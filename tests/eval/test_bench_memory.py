import json

import pytest

from reelkit.eval.bench import memory as suite
from reelkit.eval.bench import run_suite, write_report
from reelkit.pipelines.text_to_video import tiny_pipeline

TINY = {"teacher": [(9, 64)], "svd_unet": [(4, 32)], "animatediff_unet": [(4, 32)]}


@pytest.fixture
def tiny_suite(configure):
    configure(suite, LOAD_TEACHER=lambda: tiny_pipeline(open_gates=True), SIZES={True: TINY, False: TINY})


def test_every_model_and_method_is_a_row_with_its_figures(tiny_suite, tmp_path):
    report = run_suite("memory", quick=True, repeats=1, report_path=tmp_path / "memory.json")
    write_report(report, tmp_path / "memory.json")
    rows = json.loads((tmp_path / "memory.json").read_text())["rows"]
    assert [(row["model"], row["method"]) for row in rows] == [
        (model, method) for model in TINY
        for method in ("plain", "naive_clip_slicing", "feature_slicing", "feature_slicing_budget")]
    for row in rows:
        for figure in ("peak_mem_bytes", "latency_s", "max_abs_diff", "memory_reduction", "latency_overhead"):
            assert figure in row, (row["model"], row["method"], figure)
        if row["method"].startswith("feature_slicing"):
            assert row["max_abs_diff"] <= 1e-4, row
            assert row["memory_reduction"] > 1, row
        if row["method"] == "naive_clip_slicing":
            assert row["max_abs_diff"] > 1e-3, row  # clip by clip breaks the temporal layers
    assert (tmp_path / "memory_peak_vs_size.png").is_file()
