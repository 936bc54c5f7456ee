import logging

import av
import numpy as np
import pytest
import torch
from PIL import Image

from reelkit.data import video_io
from reelkit.data.video_io import contact_sheet, probe_video, read_video, write_frames, write_video
from reelkit.data.world import render_clip
from reelkit.errors import ReelkitError, VideoReadError
from reelkit.metrics import video_psnr


@pytest.fixture(scope="module")
def clip():
    return render_clip(3, 17, (64, 96)).video


def counter_video(frames: int) -> torch.Tensor:
    """Frame i is a flat grey of level i * 6 (in 0..255), so a decoded frame tells its index."""
    levels = torch.arange(frames, dtype=torch.float32) * 6 / 127.5 - 1
    return levels.view(1, frames, 1, 1).expand(3, frames, 32, 32).clone()


def frame_indices(video: torch.Tensor) -> list[int]:
    return [round(((video[:, t].mean().item() + 1) * 127.5) / 6) for t in range(video.shape[1])]


@pytest.mark.parametrize("suffix, min_psnr", [(".mp4", 30.0), (".webm", 28.0), (".gif", 20.0)])
def test_round_trip(tmp_path, clip, suffix, min_psnr):
    path = write_video(clip, tmp_path / f"clip{suffix}", fps=8)
    back = read_video(path)
    assert back.shape == clip.shape
    assert video_psnr(back, clip) > min_psnr


def test_png_folder_round_trip_is_lossless(tmp_path, clip):
    folder = write_frames(clip, tmp_path / "frames")
    back = read_video(folder)
    quantised = torch.from_numpy(video_io.to_uint8_frames(clip)).permute(3, 0, 1, 2).float() / 127.5 - 1
    assert torch.equal(back, quantised)
    assert probe_video(folder).num_frames == 17


def test_resampling_to_a_lower_fps_takes_every_other_frame(tmp_path):
    path = write_video(counter_video(33), tmp_path / "count.mp4", fps=16)
    assert frame_indices(read_video(path, fps=8)) == list(range(0, 33, 2))
    assert frame_indices(read_video(path, num_frames=5, fps=4)) == [0, 4, 8, 12, 16]
    assert frame_indices(read_video(path, num_frames=5, fps=16, start_s=1.0)) == [16, 17, 18, 19, 20]


def test_resampling_to_a_higher_fps_repeats_frames(tmp_path):
    path = write_video(counter_video(9), tmp_path / "count.mp4", fps=4)
    assert frame_indices(read_video(path, num_frames=9, fps=8)) == [0, 0, 1, 1, 2, 2, 3, 3, 4]


def test_resize_and_centre_crop(tmp_path, clip):
    path = write_video(clip, tmp_path / "clip.mp4")
    square = read_video(path, size=32)
    assert square.shape == (3, 17, 32, 32)
    rect = read_video(path, size=(40, 24))
    assert rect.shape == (3, 17, 40, 24)
    # The centre crop of a 64x96 clip resized to 32 high keeps its middle 64x64 region.
    middle = torch.nn.functional.avg_pool2d(clip[:, :, :, 16:80], 2)
    assert video_psnr(square, middle) > 25


def test_frame_counts_round_down_to_1_plus_4k_with_a_notice(tmp_path, clip, caplog):
    path = write_video(clip, tmp_path / "clip.mp4")
    with caplog.at_level(logging.WARNING, logger="reelkit"):
        video = read_video(path, num_frames=12)
    assert video.shape[1] == 9
    assert "12 frames is not 1+4k; using 9" in caplog.text
    four_k = write_video(clip[:, :15], tmp_path / "15.mp4")
    assert read_video(four_k).shape[1] == 13  # every frame, rounded down


def test_contact_sheet(tmp_path, clip):
    path = contact_sheet(clip, tmp_path / "sheet.png", columns=4, gap=2)
    with Image.open(path) as sheet:
        assert sheet.size == (4 * 96 + 3 * 2, 5 * 64 + 4 * 2)


def test_missing_empty_and_corrupt_inputs(tmp_path):
    with pytest.raises(VideoReadError, match="no such file"):
        read_video(tmp_path / "nope.mp4")
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(VideoReadError, match="empty"):
        read_video(tmp_path / "empty.mp4")
    (tmp_path / "noise.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(VideoReadError, match="not a readable video"):
        read_video(tmp_path / "noise.mp4")
    (tmp_path / "frames").mkdir()
    with pytest.raises(VideoReadError, match="no .png frames"):
        read_video(tmp_path / "frames")
    (tmp_path / "frames" / "0.png").write_bytes(b"not a png")
    with pytest.raises(VideoReadError, match="not a readable PNG"):
        read_video(tmp_path / "frames")


def test_truncated_video(tmp_path, clip):
    whole = write_video(clip, tmp_path / "clip.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(VideoReadError):
        read_video(tmp_path / "cut.mp4", num_frames=17)


def test_too_few_frames(tmp_path, clip):
    path = write_video(clip, tmp_path / "clip.mp4", fps=8)
    with pytest.raises(VideoReadError, match="only 9 frames at 4 fps"):
        read_video(path, num_frames=13, fps=4)


def test_bad_write_requests(tmp_path, clip):
    with pytest.raises(ReelkitError, match="cannot write '.avi'"):
        write_video(clip, tmp_path / "x.avi")
    with pytest.raises(ReelkitError, match="fps must be a finite number"):
        write_video(clip, tmp_path / "x.mp4", fps=0)
    with pytest.raises(ReelkitError, match=r"\(C, T, H, W\)"):
        write_video(clip[0], tmp_path / "x.mp4")


def test_a_failed_write_leaves_the_old_file_alone(tmp_path, clip, monkeypatch):
    path = write_video(clip, tmp_path / "clip.mp4")
    before = path.read_bytes()

    def broken(*args, **kwargs):
        raise RuntimeError("encoder died")

    monkeypatch.setattr(av.VideoFrame, "from_ndarray", broken)
    with pytest.raises(RuntimeError):
        write_video(clip[:, :5], path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]


def test_real_clips(tmp_path, shared_clips):
    for real in shared_clips:
        info = probe_video(real)
        assert (info.width, info.height) == (1280, 720) and info.fps == pytest.approx(30, abs=0.5)
        video = read_video(real, num_frames=33, fps=8, size=128)
        assert video.shape == (3, 33, 128, 128)
        assert -1 <= video.min() < video.max() <= 1 and video.std() > 0.05
        back = read_video(write_video(video, tmp_path / real.name, fps=8))
        assert back.shape == video.shape and video_psnr(back, video) > 30


def test_real_clip_as_gif_and_frames(tmp_path, shared_clips):
    video = read_video(shared_clips[0], num_frames=9, fps=4, size=(64, 112))
    assert video.shape == (3, 9, 64, 112)
    assert read_video(write_video(video, tmp_path / "c.gif", fps=4)).shape == video.shape
    assert read_video(write_frames(video, tmp_path / "f")).shape == video.shape
