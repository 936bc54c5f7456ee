"""Context parallelism on diffusers' engine, checked with two real gloo processes on CPU (tests/parallel/worker.py):
the split model equals the model alone, and the caches take the same decisions on every rank."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import run_torchrun  # tests/parallel/conftest.py
from reelkit.metrics import video_psnr
from reelkit.parallel import ParallelError, enable_context_parallel, parse_parallel

WORKER = Path(__file__).with_name("worker.py")
PIPELINE_SCENARIOS = ("plain", "adacache", "adacache_moreg", "adacache_per_sample", "step_rehash", "feature_slicing")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("parallel")
    done = run_torchrun(WORKER, out)
    assert done.returncode == 0, done.stderr[-4000:]
    return [torch.load(out / f"rank{rank}.pt", weights_only=False) for rank in (0, 1)]


@pytest.mark.parametrize("scenario", PIPELINE_SCENARIOS)
def test_split_generation_equals_the_model_alone(ranks, scenario):
    for rank in ranks:
        result = rank["pipeline"][scenario]
        assert result["tokens_split"] * 2 == result["tokens_alone"]  # each rank held half of the tokens
        assert video_psnr(result["split"], result["alone"]) >= 40.0
        torch.testing.assert_close(result["split"], result["alone"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("scenario", PIPELINE_SCENARIOS)
def test_cache_decisions_are_identical_on_every_rank_and_to_the_model_alone(ranks, scenario):
    first, second = (rank["pipeline"][scenario] for rank in ranks)
    assert first["split_decisions"] == second["split_decisions"] == first["alone_decisions"]


@pytest.mark.parametrize("scenario", ["adacache", "adacache_moreg", "adacache_per_sample", "step_rehash"])
def test_the_caches_reuse_steps_under_parallelism(ranks, scenario):
    decisions = ranks[0]["pipeline"][scenario]["split_decisions"]
    for computed in decisions.values():
        steps = computed[0] if computed and isinstance(computed[0], tuple) else computed
        assert 0 < len(steps) < 8  # some of the 8 steps were reused


def test_wan_with_adacache_and_moreg_on_diffusers_own_plan(ranks):
    first, second = ranks[0]["wan"], ranks[1]["wan"]
    torch.testing.assert_close(first["split"], first["alone"], atol=1e-4, rtol=0)
    assert first["split_decisions"] == second["split_decisions"] == first["alone_decisions"]
    assert len(first["alone_decisions"]["ada/cond"][0]) < 8


def test_rank_dependent_inputs_do_not_make_the_ranks_diverge(ranks):
    # each rank was given another prompt (and Wan another latent): their residuals differ, their decisions may not
    assert not torch.equal(ranks[0]["rank_dependent"]["video"], ranks[1]["rank_dependent"]["video"])
    assert ranks[0]["rank_dependent"]["decisions"] == ranks[1]["rank_dependent"]["decisions"]
    assert ranks[0]["wan"]["skewed_decisions"] == ranks[1]["wan"]["skewed_decisions"]


@pytest.mark.parametrize("case, words", [
    ("odd_size", "do not split over 2 processes"),
    ("ring_on_cpu", "ring attention needs"),
    ("too_many", "ulysses=3"),
    ("backend", "does not support context parallelism"),
    ("rehash_calibration", "calibrates in one process"),
    ("first_block_cache", "not consistent under context parallelism"),
])
def test_bad_settings_are_one_line_errors_on_every_rank(ranks, case, words):
    first, second = ranks[0]["refusals"][case], ranks[1]["refusals"][case]
    assert first is not None and words in first and "\n" not in first
    assert first == second  # and the worker reached its final barrier: no rank was left waiting


@pytest.mark.parametrize("text", ["ulysses", "ulysses=0", "ring=x", "tensor=2", "=2"])
def test_parse_parallel_refuses_malformed_settings(text):
    with pytest.raises(ParallelError, match="ulysses=N or ring=N"):
        parse_parallel(text)


def test_parallelism_without_several_processes_is_an_error(monkeypatch):
    from reelkit.pipelines.text_to_video import tiny_pipeline

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(ParallelError, match="torchrun"):
        enable_context_parallel(tiny_pipeline().transformer, "ulysses", 2)
