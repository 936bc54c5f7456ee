import pytest

from reelkit.data.video_io import read_video

SMALL = ("--frames", "5", "--size", "32", "--steps", "4")


def test_generate_with_slicing_makes_the_same_video(cli, model_dir, tmp_path):
    code, _, err = cli("generate", "a red circle moving right", "-o", tmp_path / "plain.mp4", "--model", model_dir,
                       *SMALL)
    assert code == 0, err
    code, stdout, err = cli("generate", "a red circle moving right", "-o", tmp_path / "sliced.mp4", "--model",
                            model_dir, "--slice", "3", *SMALL)
    assert code == 0, err
    assert "feature slicing: 3 frame chunks, 3 spatial chunks" in stdout
    plain, sliced = read_video(tmp_path / "plain.mp4"), read_video(tmp_path / "sliced.mp4")
    assert (plain.float() - sliced.float()).abs().max() <= 2 / 255 * 2  # mp4 rounding of identical frames at most


@pytest.mark.parametrize("value, message", [
    ("lots", "give a chunk count (8), a memory budget (2GiB) or auto"),
    ("0", "at least 1 chunk"),
    ("-5MB", "give a chunk count"),
])
def test_bad_slice_values_are_one_line_errors(cli, one_line_error, model_dir, tmp_path, value, message):
    code, _, err = cli("generate", "a red circle", "-o", tmp_path / "c.mp4", "--model", model_dir, "--slice", value,
                       *SMALL)
    assert message in one_line_error(code, err)
    assert not (tmp_path / "c.mp4").exists()


def test_auto_slicing_fits_the_free_memory(cli, model_dir, tmp_path):
    code, stdout, err = cli("generate", "a red circle", "-o", tmp_path / "c.mp4", "--model", model_dir, "--slice",
                            "auto", *SMALL)
    assert code == 0, err
    assert "feature slicing: 1 frame chunks" in stdout  # a tiny clip fits: nothing to slice

