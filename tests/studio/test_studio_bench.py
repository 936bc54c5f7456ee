"""``reelkit bench studio --quick``: the page's compare figures and its answer time next to the CLI's."""

import pytest

pytest.importorskip("gradio_client")


def test_the_studio_suite_reports_the_compare_view_and_the_page_latency():
    from reelkit.eval.bench import run_suite

    report = run_suite("studio", quick=True)
    rows = {row["method"]: row for row in report["rows"]}
    compare = rows["compare_adacache_fast"]
    assert compare["clips"] == 2 and compare["speedup"] > 1.0 and 10 < compare["psnr_db"] <= 100
    assert rows["student_page"]["latency_s"] > 0 and rows["student_cli"]["latency_s"] > 0
    assert rows["student_cli"]["page_minus_cli_s"] is not None
