import json

from reelkit.eval.bench import budget as suite
from reelkit.eval.bench import run_suite, write_report
from reelkit.pipelines.text_to_video import tiny_pipeline


def test_budget_suite_fits_the_teacher_under_each_budget(configure, tmp_path, one_thread):
    pipe = tiny_pipeline(open_gates=True)
    configure(suite, LOAD=lambda name: pipe, SIZES={True: (64,), False: (64,)}, FRAMES=9,
              BUDGET_SHARES=(0.75, 0.4, 0.1))
    path = tmp_path / "budget.json"
    report = run_suite("budget", quick=True, repeats=1, report_path=path)
    write_report(report, path)
    plain, sliced, *fitted = report["rows"]
    assert plain["method"] == "teacher/4/g5" and plain["psnr_db"] == 100.0 and plain["memory_reduction"] == 1.0
    assert sliced["method"] == "teacher/4/g5/slice8" and sliced["psnr_db"] == 100.0  # exact
    assert [row["budget_bytes"] for row in fitted] == [int(s * plain["peak_mem_bytes"]) for s in suite.BUDGET_SHARES]
    # the decode holds the peak: 4-frame chunks reach 3/4 of it, tiles 2/5; a tenth is out of reach, and says so
    assert [row["method"] for row in fitted[:2]] == ["teacher/4/g5/chunk4", "teacher/4/g5/chunk4/tile32"]
    assert [row["fits"] for row in fitted] == [True, True, False]
    assert all(row["peak_mem_bytes"] <= row["budget_bytes"] for row in fitted[:2])
    assert json.loads(path.read_text())["settings"]["budget_shares"] == list(suite.BUDGET_SHARES)
