import json

import pytest

SMALL = ("--frames", "5", "--size", "32", "--steps", "8")


@pytest.fixture(scope="module")
def codebook(tmp_path_factory, model_dir):
    from reelkit.cli import main

    folder = tmp_path_factory.mktemp("calibration")
    (folder / "prompts.txt").write_text("a red circle moving right\na blue star spinning\n")
    code = main(["calibrate", "adacache", "--prompts", str(folder / "prompts.txt"), "-o", str(folder / "book.json"),
                 "--model", str(model_dir), "--target-psnr", "25", *SMALL])
    assert code == 0
    return folder / "book.json"


def test_generate_with_adacache_reports_computed_and_reused_steps(cli, model_dir, tmp_path):
    code, stdout, err = cli("generate", "a red circle moving right", "-o", tmp_path / "a.mp4", "--model", model_dir,
                            "--cache", "adacache-slow", "--moreg", *SMALL)
    assert code == 0, err
    assert (tmp_path / "a.mp4").is_file()
    assert "adacache: computed/reused steps: cond" in stdout and "uncond" in stdout


def test_batch_mode_totals_the_steps(cli, model_dir, tmp_path):
    (tmp_path / "p.txt").write_text("a red circle\na blue star spinning\n")
    code, stdout, err = cli("generate", "--prompts", tmp_path / "p.txt", "--out-dir", tmp_path / "out", "--model",
                            model_dir, "--cache", "adacache", *SMALL)
    assert code == 0, err
    assert "denoiser calls computed" in stdout and "over 2 clip(s)" in stdout


def test_calibrate_writes_a_codebook_that_generate_uses(cli, codebook, model_dir, tmp_path):
    data = json.loads(codebook.read_text())
    assert data["codebook"] and data["target_psnr"] == 25 and data["steps"] == 8
    assert [e["threshold"] for e in data["codebook"]] == sorted(e["threshold"] for e in data["codebook"])
    code, stdout, err = cli("generate", "a green square", "-o", tmp_path / "b.mp4", "--model", model_dir,
                            "--codebook", codebook, *SMALL)
    assert code == 0, err
    assert "computed/reused steps" in stdout


@pytest.mark.parametrize("extra, message", [
    (("--cache", "deepcache"), "unknown --cache"),
    (("--moreg",), "--moreg needs --cache"),
    (("--codebook", "missing.json"), "no such codebook"),
    (("--codebook", "corrupt.json"), "not a codebook file"),
    (("--cache", "adacache-slow", "--codebook", "book.json"), "--codebook replaces"),
])
def test_bad_cache_options_are_one_line_errors(cli, one_line_error, model_dir, tmp_path, extra, message):
    (tmp_path / "corrupt.json").write_text("[1, 2")
    (tmp_path / "book.json").write_text('{"codebook": [{"threshold": 0.1, "rate": 2}]}')
    extra = tuple(str(tmp_path / e) if e.endswith(".json") else e for e in extra)
    code, _, err = cli("generate", "a red circle", "-o", tmp_path / "c.mp4", "--model", model_dir, *extra, *SMALL)
    assert message in one_line_error(code, err)
    assert not (tmp_path / "c.mp4").exists()


@pytest.mark.parametrize("prompts, extra, message", [
    ("a red circle\n", ("--steps", "3"), "at least 6"),
    ("a red circle\n", ("--target-psnr", "0"), "--target-psnr"),
    ("a red circle\n", ("-o", "book.txt"), "must end in .json"),
    ("a red circicle\n", (), "unknown word"),
    ("", (), "holds no prompts"),
])
def test_bad_calibration_inputs_are_one_line_errors(cli, one_line_error, model_dir, tmp_path, prompts, extra,
                                                    message):
    (tmp_path / "p.txt").write_text(prompts)
    extra = tuple(str(tmp_path / e) if e.endswith(".txt") else e for e in extra)
    code, _, err = cli("calibrate", "adacache", "--prompts", tmp_path / "p.txt", "--model", model_dir,
                       "--frames", "5", "--size", "32", *(extra if "--steps" in extra else ("--steps", "8", *extra)))
    assert message in one_line_error(code, err)
