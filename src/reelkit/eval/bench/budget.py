"""Bench suite ``budget``: ``reelkit tune --max-memory`` fitting the teacher under peak-memory budgets.

For each size, the teacher at ``STEPS`` steps (guidance 5) is measured plain, with the most Feature Slicing the
search tries (``slice8``: the whole pipeline's peak, to show how far exact slicing reaches when the VAE decode holds
the peak), and as :meth:`reelkit.eval.tune.Tuner.fit_memory` fits it under each of ``BUDGET_SHARES`` of its plain
peak (Feature Slicing and VAE chunking picked from probes, then measured: the quickest fit that keeps
``TARGET_PSNR`` against the plain run, else the quickest fit). The reference is the plain run itself, so ``psnr_db``
is what fitting the budget costs in quality.

Rows: ``method`` (the fitted candidate's key, e.g. ``teacher/20/g5/chunk4``), ``size``, ``budget_bytes`` (None for
the plain and slicing rows), ``peak_mem_bytes`` (the whole generation's peak, weights included), ``fits``,
``memory_reduction`` (plain / row), ``latency_s`` (median seconds a clip), ``latency_overhead`` (row / plain - 1)
and ``psnr_db`` (mean against the plain clips of the same prompts and seeds).
"""

from __future__ import annotations

from dataclasses import replace
from functools import cache

from reelkit.eval.bench import BenchContext
from reelkit.eval.bench.harness import heldout_prompts
from reelkit.eval.tune import SLICE_CHUNKS, Candidate, Tuner, TuneSettings

SIZES = {False: (64, 128), True: (64,)}
NUM_PROMPTS = {False: 2, True: 1}
STEPS = {False: 20, True: 4}
BUDGET_SHARES = (0.5, 0.25)
TARGET_PSNR = 30.0  # against the plain run: the quickest fit that keeps it, else the quickest fit
FRAMES, GUIDANCE = 17, 5.0
LOAD = None  # a loader by model name (tests swap in a tiny one); None: the bundled pipelines


def _row(candidate: Candidate, figures: dict, size: int, budget: int | None) -> dict:
    peak = figures["peak_mem_bytes"]
    return {"method": candidate.key(), "size": size, "budget_bytes": budget, "peak_mem_bytes": peak,
            "fits": budget is None or peak <= budget, "latency_s": figures["latency_s"], "psnr_db": figures["psnr_db"]}


def run(ctx: BenchContext) -> list[dict]:
    from reelkit.pipelines.text_to_video import load_text_to_video

    quick = ctx.quick
    prompts, _ = heldout_prompts(NUM_PROMPTS[quick])
    steps = STEPS[quick]

    @cache  # one pipeline a model for every size (each size has its own tuner)
    def load(name: str):
        pipe = LOAD(name) if LOAD is not None else load_text_to_video(name)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    ctx.settings.update({"sizes": list(SIZES[quick]), "frames": FRAMES, "steps": steps, "guidance": GUIDANCE,
                         "num_prompts": len(prompts), "budget_shares": list(BUDGET_SHARES)})
    plain = Candidate("teacher", steps, GUIDANCE)
    advance = ctx.progress("budgets", len(SIZES[quick]) * (2 + len(BUDGET_SHARES)))
    rows = []
    for size in SIZES[quick]:
        # one tuner a size: the reference clips and the decode probes serve every budget
        settings = TuneSettings(frames=FRAMES, size=size, target_psnr=TARGET_PSNR, max_memory=2**50)  # every peak
        tuner = Tuner(load, settings, ("teacher", steps), GUIDANCE)

        sliced = replace(plain, slicing=SLICE_CHUNKS[-1])
        mine = [_row(plain, tuner.measure(plain, prompts), size, None)]
        advance()
        mine.append(_row(sliced, tuner.measure(sliced, prompts), size, None))
        advance()
        for share in BUDGET_SHARES:
            settings.max_memory = int(share * mine[0]["peak_mem_bytes"])
            mine.append(_row(*tuner.fit_memory(plain, prompts), size, settings.max_memory))
            advance()
        for measured in mine:
            measured["memory_reduction"] = mine[0]["peak_mem_bytes"] / measured["peak_mem_bytes"]
            measured["latency_overhead"] = measured["latency_s"] / mine[0]["latency_s"] - 1
        rows += mine
    return rows
