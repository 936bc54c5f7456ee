"""A memory budget: ``tune --max-memory`` fits Feature Slicing and VAE chunking to it, recipes carry the chunking,
``generate`` applies it, and its options fail as one-line errors."""

from __future__ import annotations

import json

import pytest
import torch

from reelkit.accel.options import AccelerationOptions, apply_acceleration, remove_acceleration
from reelkit.accel.recipe import FORMAT, Recipe, apply_recipe, load_recipe, model_fingerprint
from reelkit.errors import ReelkitError
from reelkit.eval.tune import Candidate, Tuner, TuneSettings
from reelkit.generation import GenerationSettings, generate_video
from reelkit.pipelines.text_to_video import tiny_pipeline
from reelkit.vae.chunking import chunking_ladder

PROMPTS = ["a red circle moving right", "a blue star spinning"]
FRAMES, SIZE = 9, 64  # long and large enough for a 4-frame chunk and a 32 px tile


def _tuner(pipe, budget: int) -> Tuner:
    return Tuner(lambda name: pipe, TuneSettings(frames=FRAMES, size=SIZE, target_psnr=10, max_memory=budget),
                 ("tiny", 4))


@pytest.fixture(scope="module")
def plain_peak() -> int:
    """Peak bytes of a plain generation (in the tiny pipeline, as at real sizes, the decode holds it)."""
    return _tuner(tiny_pipeline(), 2**40).measure(Candidate("tiny", 4), PROMPTS)["peak_mem_bytes"]


@pytest.mark.parametrize("share, chunk, tile", [(0.75, 4, None), (0.4, 4, 32)])
def test_a_budget_is_met_by_the_least_chunking_that_fits(plain_peak, one_thread, share, chunk, tile):
    # Feature Slicing alone cannot bring this decode under 3/4 of its peak; 4-frame chunks can, and tiles below 2/5
    pipe = tiny_pipeline()
    budget = int(share * plain_peak)
    fitted, figures = _tuner(pipe, budget).fit_memory(Candidate("tiny", 4), PROMPTS)
    assert (fitted.vae_chunk_frames, fitted.vae_tile) == (chunk, tile)
    assert figures["peak_mem_bytes"] <= budget and figures["psnr_db"] > 10
    assert pipe.vae.chunking is None  # the search leaves the pipeline plain


def test_when_no_fit_keeps_the_quality_target_the_quickest_that_fits_memory_is_reported(plain_peak,
                                                                                                 one_thread):
    pipe = tiny_pipeline()
    tuner = _tuner(pipe, int(0.75 * plain_peak))
    tuner.settings.target_psnr = 99.0  # chunked decoding is approximate: no fit keeps 99 dB
    fitted, figures = tuner.fit_memory(Candidate("tiny", 4), PROMPTS)
    assert fitted.key() == "tiny/4/g5/chunk4" and figures["peak_mem_bytes"] <= tuner.settings.max_memory
    assert not tuner.meets(figures)


def test_a_candidate_under_the_budget_is_kept_as_it_is(plain_peak, one_thread):
    fitted, figures = _tuner(tiny_pipeline(), plain_peak * 2).fit_memory(Candidate("tiny", 4), PROMPTS)
    assert fitted == Candidate("tiny", 4) and figures["peak_mem_bytes"] <= plain_peak * 2


def test_the_ladder_chunks_in_time_before_tiling_and_skips_chunks_as_long_as_the_clip():
    assert [(c.frames_per_chunk, c.tile_size) for c in chunking_ladder(33, 256)] == [
        (8, None), (4, None), (4, 192), (4, 128), (4, 64), (4, 32)]
    assert chunking_ladder(5, 32) == []


def test_vae_chunking_options_decode_like_the_vaes_own_chunking_and_come_off_again(one_thread):
    pipe = tiny_pipeline()
    settings = GenerationSettings(2, 5.0, 0, FRAMES, SIZE)
    plain = generate_video(pipe, PROMPTS[0], settings)
    applied = apply_acceleration(pipe, AccelerationOptions(vae_chunk_frames=4, vae_tile=32), steps=2)
    chunked = generate_video(pipe, PROMPTS[0], settings)
    assert applied.describe() == "VAE chunks of 4 frames in 32 px tiles"
    remove_acceleration(pipe)
    assert torch.equal(generate_video(pipe, PROMPTS[0], settings), plain)
    pipe.vae.enable_chunking(4, 32)
    assert torch.equal(generate_video(pipe, PROMPTS[0], settings), chunked)
    assert not torch.equal(chunked, plain)  # approximate at chunk and tile borders: tune measures what it costs


def test_vae_chunking_needs_a_cv_vae():
    pipe = tiny_pipeline()
    pipe.vae = torch.nn.Identity()
    with pytest.raises(ReelkitError, match="needs a CV-VAE"):
        apply_acceleration(pipe, AccelerationOptions(vae_chunk_frames=4), steps=2)


def test_a_recipe_carries_vae_chunking_to_generate(cli, model_dir, tmp_path, one_thread):
    from reelkit.cli.common import load_generator

    pipe = load_generator(str(model_dir))
    recipe = Recipe(model=str(model_dir), fingerprint=model_fingerprint(pipe.transformer), steps=2, guidance=5.0,
                    vae_chunk_frames=4)
    path = recipe.save(tmp_path / "r.json")
    loaded = load_recipe(path)
    assert apply_recipe(pipe, loaded) == (2, 5.0) and pipe.vae.chunking.frames_per_chunk == 4
    assert "VAE chunks of 4 frames" in loaded.describe()
    code, stdout, err = cli("generate", "a red circle", "--recipe", path, "-o", tmp_path / "x.mp4", "--frames", "9",
                            "--size", "32")
    assert code == 0, err
    assert "vae: VAE chunks of 4 frames" in stdout and (tmp_path / "x.mp4").is_file()


def test_generate_decodes_in_chunks_and_tiles_on_request(cli, model_dir, tmp_path, one_thread):
    code, stdout, err = cli("generate", "a red circle", "--model", model_dir, "--steps", "2", "--frames", "9",
                            "--size", "64", "--vae-chunk-frames", "4", "--vae-tile", "32", "-o", tmp_path / "x.mp4")
    assert code == 0, err
    assert "vae: VAE chunks of 4 frames in 32 px tiles" in stdout


@pytest.mark.parametrize("args, words", [
    (("--vae-chunk-frames", "6"), "--vae-chunk-frames must be a positive multiple of 4"),
    (("--vae-chunk-frames", "0"), "--vae-chunk-frames must be a positive multiple of 4"),
    (("--vae-tile", "12"), "--vae-tile must be a multiple of 8"),
])
def test_bad_vae_chunking_options_are_one_line_errors(cli, one_line_error, tmp_path, args, words):
    code, _, err = cli("generate", "a red circle", "--steps", "2", *args, "-o", tmp_path / "x.mp4")
    assert words in one_line_error(code, err)
    assert not (tmp_path / "x.mp4").exists()


@pytest.mark.parametrize("fields", [{"vae_chunk_frames": 6}, {"vae_tile": "wide"}, {"vae_chunk_frames": 4.5}])
def test_a_recipe_with_bad_vae_chunking_is_corrupt(cli, one_line_error, tmp_path, fields):
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps({"format": FORMAT, "model": "t", "fingerprint": "x", "steps": 4, "guidance": 5,
                                **fields}))
    code, _, err = cli("generate", "a red circle", "--recipe", path, "-o", tmp_path / "x.mp4")
    assert "corrupt recipe" in one_line_error(code, err)
