from reelkit.eval.bench import parallel as suite
from reelkit.eval.bench import run_suite


def test_parallel_suite_measures_each_degree_against_one_process(configure):
    configure(suite, MODEL="tiny", NUM_PROMPTS={True: 1, False: 1}, STEPS={True: 6, False: 6})
    report = run_suite("parallel", quick=True, repeats=1)
    rows = {row["method"]: row for row in report["rows"]}
    assert set(rows) == {"ulysses_1", "ulysses_1_adacache", "ulysses_2", "ulysses_2_adacache"}
    for name in ("ulysses_2", "ulysses_2_adacache"):
        assert rows[name]["psnr_db"] >= 40 and rows[name]["latency_s"] > 0 and rows[name]["peak_mem_bytes"] > 0
        assert rows[name]["speedup"] > 0
    assert rows["ulysses_2_adacache"]["schedules_identical"] is True
    assert report["settings"]["targets"]["met_psnr"] and report["settings"]["degrees"] == [1, 2]
