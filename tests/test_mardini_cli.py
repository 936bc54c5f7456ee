"""reelkit interpolate / animate / extend: files in, a clip out; bad input is one line and exit code 2."""

import numpy as np
import pytest
from PIL import Image

from reelkit.data.video_io import probe_video, read_video, write_video
from reelkit.data.world import render_clip
from reelkit.pipelines.masked_video import save_masked_video_pipeline, tiny_masked_pipeline


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mardini_cli")
    pipe = tiny_masked_pipeline()
    save_masked_video_pipeline(pipe.planner, pipe.transformer, folder / "model")
    clip = render_clip(3, 9, 32).video
    for name, index in (("first.png", 0), ("last.png", 8)):
        pixels = ((clip[:, index].permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).byte().numpy()
        Image.fromarray(pixels).save(folder / name)
    Image.fromarray(np.zeros((48, 32, 3), np.uint8)).save(folder / "tall.png")
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(folder / "odd.png")
    write_video(clip, folder / "clip.mp4")
    (folder / "broken.png").write_bytes(b"not a png")
    return folder


def frame_count(path) -> int:
    return read_video(path).shape[1] if probe_video(path).num_frames >= 1 else 0


def test_interpolate_writes_the_clip_with_both_images_in_it(cli, files, tmp_path):
    out = tmp_path / "i.mp4"
    code, stdout, err = cli("interpolate", files / "first.png", files / "last.png", "-o", out, "--frames", "9",
                            "--steps", "2", "--model", files / "model", "--sheet", tmp_path / "s.png")
    assert code == 0, err
    assert "interpolation: 9 frames" in stdout and frame_count(out) == 9 and (tmp_path / "s.png").is_file()
    first = read_video(files / "first.png")[:, 0]
    assert (read_video(out)[:, 0] - first).abs().mean() < 0.05  # the mp4's first frame is the given image


def test_animate_and_long_clips(cli, files, tmp_path):
    code, stdout, err = cli("animate", files / "first.png", "-o", tmp_path / "a.mp4", "--frames", "9", "--at", "-1",
                            "--steps", "1", "--model", files / "model")
    assert code == 0, err and frame_count(tmp_path / "a.mp4") == 9
    code, stdout, err = cli("animate", files / "first.png", "-o", tmp_path / "l.mp4", "--long", "33", "--steps", "1",
                            "--model", files / "model")
    assert code == 0, err
    assert "33 frames (hierarchical)" in stdout and frame_count(tmp_path / "l.mp4") == 33


def test_extend_adds_frames_after_the_video(cli, files, tmp_path):
    code, stdout, err = cli("extend", files / "clip.mp4", "-o", tmp_path / "e.mp4", "--add", "12", "--steps", "1",
                            "--model", files / "model")
    assert code == 0, err
    assert "9 + 12 frames" in stdout and frame_count(tmp_path / "e.mp4") == 21


@pytest.mark.parametrize(("args", "message"), [
    (["interpolate", "first.png", "tall.png"], "give images of one size"),
    (["interpolate", "first.png", "last.png", "--frames", "2"], "too few"),
    (["interpolate", "first.png", "missing.png"], "no such file"),
    (["interpolate", "first.png", "broken.png"], "broken.png"),
    (["interpolate", "first.png", "clip.mp4"], "not an image"),
    (["animate", "first.png", "--at", "17"], "outside a clip of 17 frames"),
    (["animate", "odd.png"], "multiples of 16"),
    (["animate", "first.png", "--size", "40"], "multiple of 16"),
    (["animate", "first.png", "--steps", "0"], "--steps"),
    (["extend", "clip.mp4", "--add", "12", "--long", "33"], "not both"),
    (["extend", "clip.mp4", "--add", "2"], "adds nothing"),
])
def test_bad_input_is_one_line_and_exit_code_2(cli, one_line_error, files, tmp_path, args, message):
    out = tmp_path / "out.mp4"
    args = [files / a if a.endswith((".png", ".mp4")) else a for a in args]
    code, _, err = cli(*args, "-o", out, "--model", files / "model")
    notices_dropped = "\n".join(line for line in err.splitlines() if not line.startswith("notice:"))
    assert message in one_line_error(code, notices_dropped)
    assert not out.exists()


def test_wrong_output_suffix_and_model_folder(cli, one_line_error, files, tmp_path):
    code, _, err = cli("animate", files / "first.png", "-o", tmp_path / "a.png", "--model", files / "model")
    assert "must end in" in one_line_error(code, err)
    code, _, err = cli("animate", files / "first.png", "-o", tmp_path / "a.mp4", "--model", tmp_path)
    assert "not a MarDini pipeline" in one_line_error(code, err)
