import json

import pytest

SMALL = ("--frames", "5", "--size", "32", "--steps", "8")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def schedule(tmp_path_factory, model_dir):
    from reelkit.cli import main

    folder = tmp_path_factory.mktemp("rehash")
    (folder / "prompts.txt").write_text("a red circle moving right\n")
    code = main(["calibrate", "rehash", "--prompts", str(folder / "prompts.txt"), "--budget", "3",
                 "-o", str(folder / "rehash.json"), "--model", str(model_dir), *SMALL])
    assert code == 0
    return folder / "rehash.json"


def test_generate_with_rehash_reports_the_key_steps(cli, model_dir, tmp_path):
    code, stdout, err = cli("generate", "a red circle moving right", "-o", tmp_path / "a.mp4", "--model", model_dir,
                            "--rehash", "4", *SMALL)
    assert code == 0, err
    assert (tmp_path / "a.mp4").is_file()
    assert "step rehash: 4 full steps of 8 (key steps 0, 2, 4, 6)" in stdout  # uniform: no schedule for this model


def test_calibrate_writes_a_schedule_that_generate_maps_to_any_budget_and_step_count(cli, schedule, model_dir,
                                                                                     tmp_path):
    data = json.loads(schedule.read_text())
    assert data["steps"] == 8 and data["budget"] == 3 and len(data["key_steps"]) == 3 and data["key_steps"][0] == 0
    assert len(data["gram"]) == 8 and data["prompts"] == ["a red circle moving right"]
    code, stdout, err = cli("generate", "a green square", "-o", tmp_path / "b.mp4", "--model", model_dir,
                            "--rehash-schedule", schedule, *SMALL)
    assert code == 0, err
    keys = ", ".join(map(str, data["key_steps"]))
    assert f"step rehash: 3 full steps of 8 (key steps {keys})" in stdout
    code, stdout, err = cli("generate", "a green square", "-o", tmp_path / "c.mp4", "--model", model_dir,
                            "--rehash", "5", "--rehash-schedule", schedule, "--frames", "5", "--size", "32",
                            "--steps", "12")
    assert code == 0, err
    assert "step rehash: 5 full steps of 12 (key steps 0," in stdout


def test_batch_mode_reports_the_key_steps(cli, model_dir, tmp_path):
    (tmp_path / "p.txt").write_text("a red circle\na blue star spinning\n")
    code, stdout, err = cli("generate", "--prompts", tmp_path / "p.txt", "--out-dir", tmp_path / "out", "--model",
                            model_dir, "--rehash", "3", *SMALL)
    assert code == 0, err
    assert "wrote 2 clip(s)" in stdout and "step rehash: 3 full steps of 8" in stdout


def test_the_bundled_teacher_ships_a_profile():
    from reelkit.accel.step_rehash import RehashSchedule, bundled_schedule_path, config_from_options

    schedule = RehashSchedule.load(bundled_schedule_path())
    assert schedule.gram is not None and schedule.num_steps >= 10
    config = config_from_options(15, None, 50, bundled=True)
    assert config.schedule is not None and len(config.key_steps_for(50)) == 15
    assert len(config_from_options(4, None, 8, bundled=True).key_steps_for(8)) == 4


@pytest.mark.parametrize("extra, message", [
    (("--rehash", "0"), "--rehash must be between 1 and the number of steps (8), got 0"),
    (("--rehash", "9"), "--rehash must be between 1 and the number of steps (8), got 9"),
    (("--rehash-schedule", "missing.json"), "no such step rehash schedule"),
    (("--rehash-schedule", "corrupt.json"), "not a step rehash schedule"),
    (("--rehash-schedule", "keys.json"), "cannot be mapped"),
    (("--rehash", "3", "--cache", "adacache"), "--rehash and --cache are two caches"),
])
def test_bad_rehash_options_are_one_line_errors(cli, one_line_error, model_dir, tmp_path, extra, message):
    (tmp_path / "corrupt.json").write_text("[1, 2")
    (tmp_path / "keys.json").write_text('{"steps": 20, "key_steps": [0, 5, 10]}')
    extra = tuple(str(tmp_path / e) if e.endswith(".json") else e for e in extra)
    code, _, err = cli("generate", "a red circle", "-o", tmp_path / "c.mp4", "--model", model_dir, *extra, *SMALL)
    assert message in one_line_error(code, err)
    assert not (tmp_path / "c.mp4").exists()


@pytest.mark.parametrize("prompts, extra, message", [
    ("a red circle\n", ("--budget", "9"), "--budget must be between 1 and the number of steps (8)"),
    ("a red circle\n", ("--budget", "0"), "--budget must be between 1"),
    ("a red circle\n", ("--budget", "2", "--steps", "1"), "at least 2"),
    ("a red circle\n", ("--budget", "2", "-o", "rehash.txt"), "must end in .json"),
    ("a red circicle\n", ("--budget", "2"), "unknown word"),
    ("", ("--budget", "2"), "holds no prompts"),
])
def test_bad_calibration_inputs_are_one_line_errors(cli, one_line_error, model_dir, tmp_path, prompts, extra,
                                                    message):
    (tmp_path / "p.txt").write_text(prompts)
    extra = tuple(str(tmp_path / e) if e.endswith(".txt") else e for e in extra)
    steps = () if "--steps" in extra else ("--steps", "8")
    code, _, err = cli("calibrate", "rehash", "--prompts", tmp_path / "p.txt", "--model", model_dir,
                       "--frames", "5", "--size", "32", *steps, *extra)
    assert message in one_line_error(code, err)


def test_calibrating_without_prompts_file_is_one_line_error(cli, one_line_error, tmp_path):
    code, _, err = cli("calibrate", "rehash", "--prompts", tmp_path / "none.txt", "--budget", "3")
    assert "no such prompts file" in one_line_error(code, err)
