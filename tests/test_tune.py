"""``reelkit tune`` and recipes: a real search on a tiny model, the recipe it writes, ``generate --recipe``,
resuming, and the one-line errors."""

from __future__ import annotations

import json

import pytest

from reelkit.accel.recipe import FORMAT, Recipe, RecipeError, apply_recipe, load_recipe, model_fingerprint
from reelkit.eval.tune import Candidate, Tuner, TuneSettings, candidates
from reelkit.pipelines.text_to_video import tiny_pipeline

SMALL = ("--frames", "5", "--size", "32")


@pytest.fixture
def prompts(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("a red circle moving right\na blue star spinning\n")
    heldout = tmp_path / "heldout.txt"
    heldout.write_text("a green square growing\n")
    return path, heldout


def test_search_space_covers_steps_and_every_accelerator():
    keys = [c.key() for c in candidates(["teacher", "student"], steps_choices=(50, 20))]
    assert "teacher/50/g5" in keys and "teacher/20/g5/adacache-fast/moreg" in keys
    assert "teacher/50/g5/rehash10" in keys and "teacher/20/g5/rehash4" in keys
    assert "teacher/20/g5/gi0.4" in keys and "teacher/20/g5/adacache-fast/gi0.2" in keys
    assert "teacher/50/g5/rehash25/gi0.4" in keys  # limited guidance on the largest Step Rehash budget
    assert "teacher/20/g5/adacache-calibrated" in keys  # a codebook fitted at 20 steps against the reference
    assert "teacher/20/g5/gr0.5" in keys and "teacher/20/g5/gr0.7" in keys  # guidance reuse, alone
    assert "teacher/20/g5/rehash8/gr0.7" in keys  # and on every Step Rehash budget
    assert [k for k in keys if k.startswith("student")] == ["student/2/g5", "student/4/g5", "student/8/g5"]


def test_tune_writes_a_recipe_that_generate_applies(cli, model_dir, prompts, tmp_path, one_thread):
    path, heldout = prompts
    out = tmp_path / "recipe.json"
    code, stdout, err = cli("tune", "--prompts", path, "--heldout", heldout, "--model", model_dir, "--reference",
                            f"{model_dir}@8", "--steps", "8,4", "--target-psnr", "10", "-o", out, *SMALL)
    assert code == 0, err
    recipe = load_recipe(out)
    data = json.loads(out.read_text())
    assert data["format"] == FORMAT and recipe.measured["search"]["psnr_db"] >= 10
    assert recipe.measured["heldout"]["prompts"] == 1 and "latency_s" in recipe.measured["heldout"]
    assert len(recipe.measured["candidates"]) == len(candidates([str(model_dir)], steps_choices=(8, 4)))
    assert recipe.machine["cores"] >= 1 and "wrote" in stdout
    assert set(recipe.measured["retimed"]) <= set(recipe.measured["candidates"])
    clip = tmp_path / "clip.mp4"
    code, stdout, err = cli("generate", "a red circle", "--recipe", out, "-o", clip, *SMALL)
    assert code == 0, err
    assert clip.is_file() and f"{recipe.steps} steps" in stdout


def test_an_interrupted_search_resumes_from_its_state(model_dir, prompts, tmp_path, one_thread):
    from reelkit.cli.common import load_generator

    path, _ = prompts
    state = tmp_path / "recipe.json.state"
    settings = TuneSettings(frames=5, size=32, target_psnr=10)
    first = Tuner(load_generator, settings, (str(model_dir), 8), state_path=state)
    candidate = Candidate(str(model_dir), 4)
    figures = first.measure(candidate, ["a red circle"])
    again = Tuner(lambda name: pytest.fail("a resumed search must not generate again"), settings,
                  (str(model_dir), 8), state_path=state)
    assert again.measure(candidate, ["a red circle"]) == figures


def test_a_search_advances_its_progress_bar_once_a_candidate(one_thread):
    pipe = tiny_pipeline()
    ticks = []
    tuner = Tuner(lambda name: pipe, TuneSettings(frames=5, size=32, target_psnr=10), ("tiny", 4))
    recipe = tuner.search([Candidate("tiny", 4), Candidate("tiny", 2)], ["a red circle"], ["a blue star"],
                          advance=lambda: ticks.append(1))
    assert len(ticks) == 2 and len(recipe.measured["candidates"]) == 2


def test_a_calibrated_candidate_fits_its_codebook_once_and_its_recipe_carries_it(model_dir, prompts, tmp_path,
                                                                                  one_thread):
    from reelkit.accel.adacache import Codebook
    from reelkit.cli.common import load_generator
    from reelkit.eval.tune import CALIBRATED

    state = tmp_path / "recipe.json.state"
    settings = TuneSettings(frames=5, size=32, target_psnr=12)
    tuner = Tuner(load_generator, settings, (str(model_dir), 8), state_path=state)
    candidate = Candidate(str(model_dir), 6, cache=CALIBRATED)
    figures = tuner.measure(candidate, ["a red circle"])
    saved = json.loads(state.read_text())["measured"][f"codebook:{candidate.key()}"]
    assert saved["rates"][-1] == 1 and figures["psnr_db"] == pytest.approx(min(saved["psnr_db"], 100.0))
    again = Tuner(lambda name: pytest.fail("a resumed search must not calibrate again"), settings,
                  (str(model_dir), 8), state_path=state)
    assert again.measure(candidate, ["a red circle"]) == figures
    assert again.codebook(candidate, ["a red circle"]).rates == tuple(saved["rates"])

    pipe = tiny_pipeline()
    recipe = Recipe(model="tiny", fingerprint=model_fingerprint(pipe.transformer), steps=6, guidance=5.0,
                    cache=CALIBRATED, codebook={"thresholds": saved["thresholds"], "rates": saved["rates"]})
    loaded = load_recipe(recipe.save(tmp_path / "r.json"))
    assert apply_recipe(pipe, loaded) == (6, 5.0) and "adacache-calibrated" in loaded.describe()
    assert pipe.transformer._ada_cache_config.codebook == Codebook(tuple(saved["thresholds"]), tuple(saved["rates"]))


def test_a_recipe_with_limited_guidance_puts_it_on_the_pipeline_and_describes_it(tmp_path):
    pipe = tiny_pipeline()
    recipe = Recipe(model="tiny", fingerprint=model_fingerprint(pipe.transformer), steps=8, guidance=5.0,
                    guidance_interval=0.4)
    loaded = load_recipe(recipe.save(tmp_path / "r.json"))
    assert apply_recipe(pipe, loaded) == (8, 5.0) and pipe.guidance_interval == (0.4, 1.0)
    assert "guidance above sigma 0.4" in loaded.describe()


def test_a_recipe_with_guidance_reuse_reuses_it_on_the_rehash_steps_too(tmp_path):
    from reelkit.accel.step_rehash import config_from_options

    pipe = tiny_pipeline()
    recipe = Recipe(model="tiny", fingerprint=model_fingerprint(pipe.transformer), steps=8, guidance=5.0,
                    rehash=4, guidance_reuse=0.7)
    loaded = load_recipe(recipe.save(tmp_path / "r.json"))
    assert apply_recipe(pipe, loaded) == (8, 5.0) and "guidance reused below sigma 0.7" in loaded.describe()
    keys = config_from_options(4, None, 8, bundled=False).key_steps_for(8)
    below, every, steps = pipe.guidance_reuse
    assert (below, every) == (0.7, 2) and steps == frozenset(range(8)) - set(keys)


def test_generate_applies_a_recipe_with_a_calibrated_codebook(cli, model_dir, tmp_path):
    from reelkit.cli.common import load_generator
    from reelkit.eval.tune import CALIBRATED

    pipe = load_generator(str(model_dir))
    recipe = Recipe(model=str(model_dir), fingerprint=model_fingerprint(pipe.transformer), steps=6, guidance=5.0,
                    cache=CALIBRATED, codebook={"thresholds": [0.1, 0.3], "rates": [3, 1]}, guidance_reuse=0.5)
    code, stdout, err = cli("generate", "a red circle", "--recipe", recipe.save(tmp_path / "r.json"),
                            "-o", tmp_path / "x.mp4", *SMALL)
    assert code == 0, err
    assert "adacache:" in stdout and "guidance reuse:" in stdout and (tmp_path / "x.mp4").is_file()


def test_a_recipe_for_another_model_is_refused(tmp_path):
    recipe = Recipe(model="tiny", fingerprint=model_fingerprint(tiny_pipeline(seed=0).transformer), steps=4,
                    guidance=5.0)
    with pytest.raises(RecipeError, match="tuned for another model"):
        apply_recipe(tiny_pipeline(seed=1), recipe)


@pytest.mark.parametrize("content, words", [
    ("{not json", "not JSON"),
    ('{"model": "teacher"}', "not a reelkit recipe"),
    (json.dumps({"format": FORMAT, "model": "teacher"}), "corrupt recipe"),
    (json.dumps({"format": FORMAT, "model": "t", "fingerprint": "x", "steps": 0, "guidance": 5}), "corrupt recipe"),
    (json.dumps({"format": FORMAT, "model": "t", "fingerprint": "x", "steps": 4, "guidance": 5,
                 "guidance_interval": 2}), "corrupt recipe"),
    (json.dumps({"format": FORMAT, "model": "t", "fingerprint": "x", "steps": 4, "guidance": 5,
                 "guidance_reuse": 0}), "corrupt recipe"),
    (json.dumps({"format": FORMAT, "model": "t", "fingerprint": "x", "steps": 4, "guidance": 5,
                 "cache": "adacache-calibrated", "codebook": {"thresholds": [0.2, 0.1], "rates": [3, 1]}}),
     "corrupt recipe"),
])
def test_corrupt_recipe_files_are_one_line_errors(cli, one_line_error, tmp_path, content, words):
    path = tmp_path / "recipe.json"
    path.write_text(content)
    code, _, err = cli("generate", "a red circle", "--recipe", path, "-o", tmp_path / "x.mp4")
    assert words in one_line_error(code, err)


@pytest.mark.parametrize("args, words", [
    (("--target-psnr", "200"), "--target-psnr must lie in"),
    (("--target-adherence", "1.5"), "--target-adherence must lie in"),
    (("--max-memory", "lots"), "lots"),
    (("--reference", "teacher"), "MODEL@STEPS"),
    (("--steps", "a,b"), "--steps takes"),
])
def test_bad_tune_targets_are_one_line_errors(cli, one_line_error, prompts, tmp_path, args, words):
    path, _ = prompts
    code, _, err = cli("tune", "--prompts", path, "-o", tmp_path / "r.json", *args)
    assert words in one_line_error(code, err)


def test_a_memory_budget_nothing_meets_names_the_smallest_reachable(cli, one_line_error, model_dir, prompts,
                                                                    tmp_path, one_thread):
    path, heldout = prompts
    code, _, err = cli("tune", "--prompts", path, "--heldout", heldout, "--model", model_dir, "--reference",
                       f"{model_dir}@4", "--steps", "4", "--target-psnr", "10", "--max-memory", "1KiB",
                       "-o", tmp_path / "r.json", *SMALL)
    line = one_line_error(code, err)
    assert "no candidate meets the targets" in line and "smallest peak memory reached" in line


def test_recipe_with_other_accelerator_options_is_refused(cli, one_line_error, tmp_path):
    recipe = Recipe(model="teacher", fingerprint="x", steps=4, guidance=5.0).save(tmp_path / "r.json")
    code, _, err = cli("generate", "a red circle", "--recipe", recipe, "--cache", "adacache", "-o", tmp_path / "x.mp4")
    assert "--recipe sets the steps" in one_line_error(code, err)
