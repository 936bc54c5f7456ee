import copy

import pytest

from reelkit.accel.adacache import Codebook
from reelkit.accel.calibrate import Trajectory, calibrate_ada_cache, candidate_codebooks, simulate_schedule
from reelkit.generation import GenerationSettings
from reelkit.pipelines.text_to_video import tiny_pipeline

SETTINGS = GenerationSettings(steps=10, frames=5, size=32, guidance=4.0)


@pytest.fixture(scope="module")
def base_pipe():
    return tiny_pipeline(open_gates=True)


def test_simulated_schedules_keep_the_forced_steps_and_follow_the_metric():
    calm = Trajectory({s: 0.01 for s in range(20)})
    busy = Trajectory({s: 0.5 for s in range(20)})
    book = Codebook.from_table({0.1: 5, 1.0: 1})
    calm_steps = simulate_schedule(book, calm, 20)
    assert calm_steps[:2] == [0, 1] and calm_steps[-2:] == [18, 19]
    assert len(calm_steps) < len(simulate_schedule(book, busy, 20)) == 20


def test_candidates_sit_on_the_recorded_metric():
    trajectory = Trajectory({s: 0.01 * (s + 1) for s in range(30)})
    books = candidate_codebooks([trajectory], 30)
    assert len(books) > 10
    assert all(b.rates[-1] == 1 and list(b.rates) == sorted(b.rates, reverse=True) for b in books)
    assert min(b.thresholds[0] for b in books) < 0.1 < max(b.thresholds[-1] for b in books)


def test_calibration_returns_a_codebook_meeting_the_target(base_pipe):
    result = calibrate_ada_cache(copy.deepcopy(base_pipe), ["a red circle moving right"], 28.0, SETTINGS)
    assert result.met_target and result.psnr_db >= 28.0
    assert result.computed_fraction < 1.0 and result.evaluated
    slower_misses = [e for e in result.evaluated if e["psnr_db"] < 28.0]
    assert all(e["computed_fraction"] <= result.computed_fraction for e in slower_misses)


def test_a_lax_target_takes_the_fastest_candidate(base_pipe):
    result = calibrate_ada_cache(copy.deepcopy(base_pipe), ["a red circle moving right"], 1.0, SETTINGS)
    assert result.met_target
    assert result.computed_fraction == min(e["computed_fraction"] for e in result.evaluated) < 0.6


def test_calibration_against_other_references_meets_the_target_against_them(base_pipe):
    from reelkit.accel.adacache import AdaCacheConfig, AdaCacheError, apply_ada_cache, remove_ada_cache
    from reelkit.generation import generate_video
    from reelkit.metrics import video_psnr

    pipe, prompt = copy.deepcopy(base_pipe), "a red circle moving right"
    more_steps = GenerationSettings(steps=20, frames=5, size=32, guidance=4.0)
    reference = generate_video(pipe, prompt, more_steps).float()
    result = calibrate_ada_cache(pipe, [prompt], 24.0, SETTINGS, references=[reference])
    assert result.met_target and result.computed_fraction < 1.0
    apply_ada_cache(pipe.transformer, AdaCacheConfig(codebook=result.codebook))
    try:  # the chosen codebook's clip, measured against the 20-step reference, is the figure reported
        assert video_psnr(generate_video(pipe, prompt, SETTINGS).float(), reference) == pytest.approx(result.psnr_db)
    finally:
        remove_ada_cache(pipe.transformer)
    with pytest.raises(AdaCacheError, match="2 reference clips for 1 prompts"):
        calibrate_ada_cache(pipe, [prompt], 24.0, SETTINGS, references=[reference, reference])
