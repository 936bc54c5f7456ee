import json

import pytest

from reelkit.eval.bench import cache as suite
from reelkit.eval.bench import run_suite, write_report
from reelkit.pipelines.text_to_video import tiny_pipeline


@pytest.fixture
def tiny_suite(configure, tiny_judge):
    configure(suite, PIPELINE=lambda: tiny_pipeline(open_gates=True), JUDGE=tiny_judge, FRAMES=5, SIZE=32,
              NUM_PROMPTS={True: 2, False: 2}, CALIBRATION_PROMPTS={True: 1, False: 1}, STEPS={True: 12, False: 12})


def test_every_method_is_a_row_with_the_figures_or_its_error(tiny_suite, tmp_path):
    report = run_suite("cache", quick=True, repeats=1, report_path=tmp_path / "cache.json")
    write_report(report, tmp_path / "cache.json")
    rows = {row["method"]: row for row in json.loads((tmp_path / "cache.json").read_text())["rows"]}
    assert list(rows) == ["uncached", "adacache_slow", "adacache_fast", "adacache_fast_moreg", "adacache_calibrated",
                          "pab", "fastercache", "firstblockcache", "magcache", "taylorseer", "cache_dit"]
    assert rows["uncached"]["psnr_db"] == suite.MAX_PSNR and rows["uncached"]["speedup"] > 0
    for name, row in rows.items():
        if "error" in row:
            assert not name.startswith("adacache") and row["error"]
            continue
        for figure in ("latency_s", "speedup", "denoise_speedup", "computed_steps", "flops", "psnr_db", "ssim",
                       "psnr_db_high_motion", "adherence_shape"):
            assert figure in row, (name, figure)
    fastest = min((row for name, row in rows.items() if name.startswith("adacache")),
                  key=lambda row: row["computed_steps"])
    assert fastest["computed_steps"] < rows["uncached"]["computed_steps"]
    assert fastest["flops"] < rows["uncached"]["flops"]
    settings = report["settings"]
    assert set(settings["sweeps"]) == {m.name for m in suite.methods(True)}
    assert len(settings["sweeps"]["adacache_fast"]) == 2  # the default knob and one quick sweep point
    assert settings["calibrated_codebook"]["rates"] and len(settings["high_motion_prompts"]) == 1
    assert (tmp_path / "cache_psnr_vs_speedup.png").is_file()


def test_speedup_at_a_psnr_reads_the_curve_between_points():
    curve = [{"speedup": 1.5, "psnr_db": 40.0}, {"speedup": 2.5, "psnr_db": 30.0}, {"speedup": 3.0, "psnr_db": 20.0},
             {"speedup": 9.0, "error": "crashed"}]
    assert suite.speedup_at_psnr(curve, 35.0) == pytest.approx(2.0)
    assert suite.speedup_at_psnr(curve, 30.0) == pytest.approx(2.5)
    assert suite.speedup_at_psnr(curve, 50.0) is None


def test_methods_compare_at_equal_speedup():
    sweeps = {"a": [{"speedup": 2.0, "q": 31.0}, {"speedup": 9.0, "q": 20.0}],
              "b": [{"speedup": 1.0, "q": 40.0}, {"speedup": 3.0, "q": 20.0}]}
    assert suite.compare_at_equal_speedup(sweeps, "a", "b", "q") == [{"speedup": 2.0, "a": 31.0, "b": 30.0}]
