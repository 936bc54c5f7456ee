"""Property-based fuzzing of the command line, the config files and the video reader (Hypothesis).

Every run must end in exit code 0 or 2 with at most one ``error:`` line and no traceback, and must leave
every file that existed before untouched when it fails. ``REELKIT_FUZZ_EXAMPLES=N`` raises the number of
examples per property (CI runs a small fixed budget).
"""

import hashlib
import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reelkit.cli import main
from reelkit.data.video_io import write_video
from reelkit.data.world import render_clip
from reelkit.errors import ReelkitError

EXAMPLES = int(os.environ.get("REELKIT_FUZZ_EXAMPLES", "12"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

numbers = st.one_of(st.integers(-10**12, 10**12), st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from(["0", "-1", "1e309", "nan", "inf", "-inf", "", "abc", "17", "64", "2.5"]))
small_ints = st.one_of(st.integers(-3, 70), st.sampled_from([0, -1, 2**63, 10**9]))


def snapshot(folder: Path) -> dict[Path, str]:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()}


def run_cli(capsys, *args) -> tuple[int, str]:
    code = main([str(a) for a in args])
    _, err = capsys.readouterr()
    return code, err


def check_outcome(code: int, err: str, before: dict, folder: Path) -> None:
    assert code in (0, 2), (code, err)
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) <= 1, err
    if code == 2:
        assert errors, err
        after = snapshot(folder)
        assert {p: h for p, h in after.items() if p in before} == before, "a failed command changed a file"


@pytest.fixture(scope="module")
def sample_clip(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fuzz_clip")
    path = folder / "clip.mp4"
    write_video(render_clip(0, 9, 32).video, path, fps=8)
    return path


@pytest.fixture
def workspace(tmp_path, sample_clip) -> Path:
    shutil.copy(sample_clip, tmp_path / "in.mp4")
    (tmp_path / "existing.mp4").write_bytes(b"precious")
    (tmp_path / "folder").mkdir()
    return tmp_path


def outputs(folder: Path):
    return st.sampled_from(["out.mp4", "existing.mp4", "in.mp4", "folder", "out.txt", "folder/x.gif",
                            "in.mp4/x.mp4", "missing/x.mp4", "out.png"]).map(lambda name: folder / name)


@FUZZ
@given(data=st.data())
def test_world_render_options(capsys, workspace, data):
    before = snapshot(workspace)
    args = ["world", "render", data.draw(st.sampled_from(["a red circle moving right", "a blue squre", "",
                                                           "a cat"])),
            "-o", data.draw(outputs(workspace)), "--seed", data.draw(small_ints),
            "--frames", data.draw(small_ints), "--size", data.draw(st.sampled_from([0, 8, 30, 32, -8, 10**6]))]
    if data.draw(st.booleans()):
        args += ["--fps", data.draw(numbers)]
    check_outcome(*run_cli(capsys, *args), before, workspace)


@FUZZ
@given(data=st.data())
def test_video_convert_options(capsys, workspace, data):
    before = snapshot(workspace)
    args = ["video", "convert", data.draw(st.sampled_from(["in.mp4", "existing.mp4", "absent.mp4", "folder"])),
            "-o", data.draw(outputs(workspace))]
    for option, values in (("--frames", small_ints), ("--fps", numbers), ("--size", small_ints),
                           ("--start", numbers)):
        if data.draw(st.booleans()):
            args += [option, data.draw(values)]
    args[2] = workspace / args[2]
    check_outcome(*run_cli(capsys, *args), before, workspace)


@FUZZ
@given(data=st.data())
def test_generate_options_on_a_tiny_model(capsys, workspace, model_dir, data):
    before = snapshot(workspace)
    args = ["generate", data.draw(st.sampled_from(["a red circle moving right", "a purple dragon", ""])),
            "--model", model_dir, "-o", data.draw(outputs(workspace)),
            "--steps", data.draw(st.sampled_from([1, 2, 0, -1])), "--frames", data.draw(st.sampled_from([5, 4, 0])),
            "--size", data.draw(st.sampled_from([32, 30, 0, -16]))]
    for option, values in (("--guidance", numbers), ("--seed", small_ints), ("--fps", numbers)):
        if data.draw(st.booleans()):
            args += [option, data.draw(values)]
    check_outcome(*run_cli(capsys, *args), before, workspace)


CONFIG_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**6), st.floats(allow_nan=True),
                          st.text(max_size=8), st.lists(st.integers(-2, 64), max_size=4),
                          st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))


@FUZZ
@given(values=st.dictionaries(st.sampled_from(["stage", "max_steps", "save_every", "log_every", "batch_size",
                                               "learning_rate", "size", "num_frames", "seed", "threads",
                                               "photo_fraction", "object_weight", "mixed_precision", "model",
                                               "time_limit_minutes", "unknown_key"]),
                              CONFIG_VALUES, max_size=6))
def test_config_files_are_checked_before_anything_runs(tmp_path, values):
    """A config either loads into a valid dataclass or is one ReelkitError; nothing else escapes."""
    from reelkit.train.common import load_config
    from reelkit.train.vae import VaeTrainConfig

    path = tmp_path / "fuzz.yaml"
    path.write_text(yaml.safe_dump(values))
    try:
        config = load_config(VaeTrainConfig, path)
    except ReelkitError as error:
        assert "\n" not in str(error)
        return
    assert config.max_steps >= 1 and config.save_every >= 1 and config.batch_size >= 1


def mangle(data: bytes, how: str, where: float, byte: int) -> bytes:
    cut = max(1, int(len(data) * where))
    if how == "truncate":
        return data[:cut]
    if how == "flip":
        return data[:cut - 1] + bytes([byte]) + data[cut:]
    if how == "zero_run":
        return data[:cut] + bytes(min(512, len(data) - cut)) + data[cut + 512:]
    return data


@FUZZ
@given(how=st.sampled_from(["truncate", "flip", "zero_run", "intact"]), where=st.floats(0.0, 1.0),
       byte=st.integers(0, 255), suffix=st.sampled_from([".mp4", ".gif", ".webm", ".png", ".mov"]))
def test_the_reader_on_truncated_corrupted_or_mislabelled_files(capsys, tmp_path, sample_clip, how, where, byte,
                                                                suffix):
    broken = tmp_path / f"broken{suffix}"
    broken.write_bytes(mangle(sample_clip.read_bytes(), how, where, byte))
    before = snapshot(tmp_path)
    for args in (["video", "info", broken], ["video", "convert", broken, "-o", tmp_path / "out.gif", "--size", 16]):
        check_outcome(*run_cli(capsys, *args), before, tmp_path)


@FUZZ
@given(values=st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=1, max_size=4))
def test_non_finite_video_is_refused_not_written_black(tmp_path, values):
    video = torch.zeros(3, 1, 8, 8)
    video.view(-1)[: len(values)] = torch.tensor(values)
    path = tmp_path / "out.mp4"
    path.unlink(missing_ok=True)  # examples share tmp_path
    finite = all(v == v and abs(v) != float("inf") for v in values)
    if finite:
        write_video(video, path)
        assert path.is_file()
    else:
        with pytest.raises(ReelkitError, match="non-finite"):
            write_video(video, path)
        assert not path.exists()
