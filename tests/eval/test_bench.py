import json
import sys
import types

import pytest
import torch

from reelkit.errors import ReelkitError
from reelkit.eval.bench import SUITES, BenchContext, load_suite, run_suite, write_report
from reelkit.eval.bench.harness import count_flops, machine_info, measure_latency, peak_memory_bytes


def test_flops_of_a_matmul_are_exact():
    a, b = torch.randn(16, 32), torch.randn(32, 8)
    assert count_flops(lambda: a @ b) == 2 * 16 * 32 * 8


def test_peak_memory_sees_transient_allocations_and_module_weights():
    def make_and_drop():
        big = torch.empty(1_000_000)  # 4 MB, freed before the next one
        del big
        return torch.empty(250_000)  # 1 MB

    assert 4_000_000 <= peak_memory_bytes(make_and_drop) < 5_100_000
    layer = torch.nn.Linear(500, 500)
    assert peak_memory_bytes(lambda: None, layer) >= 500 * 501 * 4


def test_latency_is_a_median_over_repeats():
    calls = []
    timing = measure_latency(lambda: calls.append(1), warmup=2, repeats=5)
    assert len(calls) == 7 and len(timing.times_s) == 5
    assert timing.median_s == sorted(timing.times_s)[2]
    with pytest.raises(ValueError):
        measure_latency(lambda: None, repeats=0)


def test_machine_record():
    info = machine_info()
    assert info["cores"] >= 1 and info["gpu"] is None and info["torch"] == torch.__version__


def test_unknown_suite_and_missing_cuda():
    with pytest.raises(ReelkitError, match="unknown bench suite 'nope'; known suites:"):
        load_suite("nope")
    if not torch.cuda.is_available():
        with pytest.raises(ReelkitError, match="no CUDA device"):
            run_suite("world", device="cuda")


def test_report_layout_with_a_stub_suite(tmp_path, monkeypatch):
    def run(ctx: BenchContext):
        ctx.settings["size"] = 4
        timing = ctx.time(lambda: torch.ones(4).sum())
        flops = ctx.flops(lambda: torch.ones(4, 4) @ torch.ones(4, 4))
        return [{"method": "sum", "latency_s": timing.median_s, "flops": flops}]

    module = types.ModuleType("fake_suite")
    module.run = run
    monkeypatch.setitem(SUITES, "fake", "fake_suite")
    monkeypatch.setitem(sys.modules, "fake_suite", module)
    report = run_suite("fake", quick=True, repeats=2)
    assert list(report) == ["suite", "created", "machine", "settings", "rows"]
    assert report["settings"] == {"quick": True, "warmup": 1, "repeats": 2, "size": 4}
    assert report["rows"][0]["flops"] == 2 * 4 * 4 * 4
    path = write_report(report, tmp_path / "deep" / "r.json")
    assert json.loads(path.read_text())["suite"] == "fake"


def test_peak_memory_allows_a_module_called_repeatedly_at_top_level():
    layer = torch.nn.Linear(100, 100)

    def loop():
        for _ in range(3):
            layer(torch.randn(1000, 100))

    assert peak_memory_bytes(loop) >= 1000 * 100 * 4
