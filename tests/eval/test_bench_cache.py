import json

import pytest
import torch

from reelkit.eval.bench import cache as suite
from reelkit.eval.bench import run_suite, write_report
from reelkit.models.judge import WorldJudge
from reelkit.pipelines.text_to_video import tiny_pipeline


def lively_tiny_pipeline():
    pipe = tiny_pipeline()
    torch.manual_seed(1)
    for name, parameter in pipe.transformer.named_parameters():
        if any(key in name for key in ("time_modulation", "proj_out", "scale_shift_table")):
            parameter.data.normal_(0, 0.3)
    return pipe


@pytest.fixture
def tiny_suite(monkeypatch):
    def judge():
        torch.manual_seed(0)
        return WorldJudge(channels=(8, 8, 8, 16), feature_dim=8).eval()

    monkeypatch.setattr(suite, "PIPELINE", lively_tiny_pipeline)
    monkeypatch.setattr(suite, "JUDGE", judge)
    monkeypatch.setattr(suite, "NUM_PROMPTS", {True: 2, False: 2})
    monkeypatch.setattr(suite, "CALIBRATION_PROMPTS", {True: 1, False: 1})
    monkeypatch.setattr(suite, "STEPS", {True: 12, False: 12})
    monkeypatch.setattr(suite, "FRAMES", 5)
    monkeypatch.setattr(suite, "SIZE", 32)


def test_every_method_is_a_row_with_the_figures_or_its_error(tiny_suite, tmp_path):
    report = run_suite("cache", quick=True, repeats=1, report_path=tmp_path / "cache.json")
    write_report(report, tmp_path / "cache.json")
    rows = {row["method"]: row for row in json.loads((tmp_path / "cache.json").read_text())["rows"]}
    assert list(rows) == ["uncached", "adacache_slow", "adacache_fast", "adacache_fast_moreg", "adacache_calibrated",
                          "pab", "fastercache", "firstblockcache", "magcache", "taylorseer", "cache_dit"]
    assert rows["uncached"]["psnr_db"] == suite.MAX_PSNR and rows["uncached"]["speedup"] == 1.0
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
