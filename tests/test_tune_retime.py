"""Re-timing ``reelkit tune``'s finalists in alternation: a machine whose speed drifts during a search must not
decide which of two equally fast candidates wins, and the recipe records the re-timed figures."""

from __future__ import annotations

import types

import pytest
import torch

import reelkit.generation
from reelkit.eval import tune
from reelkit.eval.tune import Candidate, Tuner, TuneSettings
from reelkit.pipelines.text_to_video import tiny_pipeline


@pytest.fixture
def slowing_machine(monkeypatch):
    """Every generation costs its steps in seconds on a clock that runs 10% slower a clip; returns the clips'
    (steps, prompt) in order."""
    clock, calls = [0.0], []

    def generate_video(pipe, prompt, settings, seed=None):
        calls.append((settings.steps, prompt))
        clock[0] += settings.steps * (1 + 0.1 * len(calls))
        return torch.zeros(3, settings.frames, settings.size, settings.size)

    monkeypatch.setattr(reelkit.generation, "generate_video", generate_video)
    monkeypatch.setattr(tune, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    return calls


def _tuner(state_path=None, load=None):
    pipe = tiny_pipeline()
    return Tuner(load or (lambda name: pipe), TuneSettings(frames=5, size=32, target_psnr=10), ("tiny", 8),
                 state_path=state_path)


def test_finalists_timed_in_alternation_tie_when_equally_fast_although_measured_apart(slowing_machine):
    tuner = _tuner()
    first, second = Candidate("tiny", 4), Candidate("tiny", 4, guidance=4.0)  # same cost, other keys
    prompts = ["a red circle", "a blue star"]
    assert tuner.measure(first, prompts)["latency_s"] < tuner.measure(second, prompts)["latency_s"]
    slowing_machine.clear()
    retimed = tuner.retime([first, second], prompts, rounds=8)
    assert retimed[first.key()] == pytest.approx(retimed[second.key()])
    assert [prompt for _, prompt in slowing_machine] == [p for p in prompts for _ in range(2)] * 4  # r mod prompts
    slower = tuner.retime([first, Candidate("tiny", 6)], prompts, rounds=4)
    assert slower["tiny/6/g5"] > slower[first.key()]


def test_a_resumed_search_keeps_its_retimed_figures(slowing_machine, tmp_path):
    state = tmp_path / "recipe.json.state"
    finalists = [Candidate("tiny", 4), Candidate("tiny", 2)]
    retimed = _tuner(state).retime(finalists, ["a red circle"], rounds=2)
    again = _tuner(state, load=lambda name: pytest.fail("a resumed search must not time again"))
    assert again.retime(finalists, ["a red circle"], rounds=2) == retimed


def test_the_recipe_records_the_finalists_retimed_and_the_speedup_over_the_best_single(slowing_machine):
    tuner = _tuner()
    space = [Candidate("tiny", 8), Candidate("tiny", 4), Candidate("tiny", 4, guidance_reuse=0.5),
             Candidate("tiny", 2)]
    recipe = tuner.search(space, ["a red circle"], ["a blue star"])
    measured = recipe.measured
    # the zero clips match the zero reference exactly: every candidate meets the target, so the three fastest by
    # the search and the fastest single technique (fewer steps: tiny/2, also among them) are the finalists
    assert set(measured["retimed"]) == {"tiny/2/g5", "tiny/4/g5", "tiny/4/g5/gr0.5"}
    assert recipe.steps == 2 and measured["search"]["latency_s"] == measured["retimed"]["tiny/2/g5"]
    assert measured["best_single_technique_latency_s"] == measured["retimed"]["tiny/2/g5"]
    assert measured["speedup_vs_best_single"] == pytest.approx(1.0)
