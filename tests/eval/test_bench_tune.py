import json

from reelkit.eval.bench import run_suite, write_report
from reelkit.eval.bench import tune as suite
from reelkit.pipelines.text_to_video import tiny_pipeline


def test_tune_suite_measures_every_candidate_and_marks_the_front(configure, tmp_path, one_thread):
    pipes = {"teacher": tiny_pipeline(open_gates=True), "student": tiny_pipeline(seed=1, student=True)}
    configure(suite, LOAD=lambda name: pipes[name], NUM_PROMPTS={True: 1, False: 1}, SIZES={True: (32,), False: (32,)},
              STEPS={True: (8, 4), False: (8, 4)}, REFERENCE_STEPS={True: 8, False: 8}, FRAMES=5, TARGET_PSNR=12.0)
    path = tmp_path / "tune.json"
    report = run_suite("tune", quick=True, repeats=1, report_path=path)
    write_report(report, path)
    rows = report["rows"]
    methods = {row["method"] for row in rows}
    assert "teacher/8/g5" in methods and "teacher/4/g5/adacache-fast" in methods and "student/4/g5" in methods
    reference = next(row for row in rows if row["method"] == "teacher/8/g5")
    assert reference["psnr_db"] == 100.0 and reference["techniques"] == 0 and reference["pareto"]
    assert sum(row["tuned"] for row in rows) == 1
    assert any(row["pareto"] for row in rows if row["method"] != "teacher/8/g5")
    assert (tmp_path / "tune_pareto.png").is_file() and json.loads(path.read_text())["suite"] == "tune"
