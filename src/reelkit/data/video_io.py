"""Video I/O: files and frame folders in, ``(C, T, H, W)`` tensors in ``[-1, 1]`` out, and back.

Reading (PyAV) handles mp4, webm, gif and anything else FFmpeg demuxes, plus a folder of PNGs.
It resamples to a target fps by timestamp, takes ``1 + 4k`` frames, resizes the shorter side and
centre-crops, decoding only as far as it needs. Writing makes H.264 mp4 (PyAV), gif or webm, and
a contact sheet PNG for a quick look. Writes are atomic: a failed write never clobbers a file.

>>> import os, tempfile
>>> from reelkit.data.video_io import read_video, write_video
>>> from reelkit.data.world import render_clip
>>> path = os.path.join(tempfile.mkdtemp(), "clip.mp4")
>>> _ = write_video(render_clip(seed=0, num_frames=17, size=64).video, path, fps=8)
>>> read_video(path, num_frames=9, fps=4, size=32).shape  # (C, T, H, W)
torch.Size([3, 9, 32, 32])
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image

from reelkit.conventions import check_video_fits, round_down_frames
from reelkit.errors import ReelkitError, VideoReadError
from reelkit.files import atomic_path

logger = logging.getLogger("reelkit")

FRAME_FOLDER_FPS = 8.0  # a folder of PNGs carries no timing; this is its assumed rate
WRITERS = (".mp4", ".gif", ".webm")


@dataclass(frozen=True)
class VideoInfo:
    path: str
    width: int
    height: int
    fps: float
    num_frames: int  # as the container reports it (or counted, for a folder)
    duration_s: float
    codec: str


def _natural_key(path: Path) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def _frame_files(folder: Path) -> list[Path]:
    files = sorted((p for p in folder.iterdir() if p.suffix.lower() == ".png"), key=_natural_key)
    if not files:
        raise VideoReadError(f"{folder}: folder holds no .png frames")
    return files


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise VideoReadError(f"{path}: no such file or folder")
    if path.is_file() and path.stat().st_size == 0:
        raise VideoReadError(f"{path}: file is empty")


@contextmanager
def _open_container(path: Path) -> Iterator[av.container.InputContainer]:
    try:
        container = av.open(str(path), mode="r")
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as error:
        raise VideoReadError(f"{path}: not a readable video ({_short(error)})") from None
    try:
        if not container.streams.video:
            raise VideoReadError(f"{path}: holds no video stream")
        yield container
    finally:
        container.close()


def _short(error: BaseException) -> str:
    return str(error).splitlines()[0][:120] if str(error) else type(error).__name__


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Size, frame rate, length and codec of a video file or PNG folder, without decoding it."""
    path = Path(path)
    _check_exists(path)
    if path.is_dir():
        files = _frame_files(path)
        with Image.open(files[0]) as first:
            width, height = first.size
        return VideoInfo(str(path), width, height, FRAME_FOLDER_FPS, len(files), len(files) / FRAME_FOLDER_FPS,
                         "png")
    with _open_container(path) as container:
        stream = container.streams.video[0]
        if stream.codec_context is None or not stream.codec_context.width:
            raise VideoReadError(f"{path}: corrupt video (its stream has no decoder or frame size)")
        fps = float(stream.average_rate or stream.guessed_rate or 0) or FRAME_FOLDER_FPS
        duration = (float(stream.duration * stream.time_base) if stream.duration and stream.time_base
                    else (container.duration or 0) / 1e6)
        frames = stream.frames or int(round(duration * fps))
        return VideoInfo(str(path), stream.codec_context.width, stream.codec_context.height, fps, frames,
                         duration, stream.codec_context.name)


def count_frames(path: str | os.PathLike) -> tuple[int, bool]:
    """``(frames that decode, whether the data ends in corruption)``: the true length of a file whose
    header may promise more (a truncated download), found by decoding it."""
    path = Path(path)
    _check_exists(path)
    count = 0
    try:
        for _ in _timed_frames(path):
            count += 1
    except VideoReadError:
        if count == 0:
            raise
        return count, True
    return count, False


MAX_SIDE = 8192  # pixels: beyond this a frame alone outgrows the memory of the machines reelkit targets


def _resize_plan(src_h: int, src_w: int, size: int | tuple[int, int] | None) -> tuple[int, int, int, int]:
    """(resized_h, resized_w, out_h, out_w): scale to cover the output, then centre-crop to it."""
    if size is None:
        return src_h, src_w, src_h, src_w
    out_h, out_w = (size, size) if isinstance(size, int) else size
    if not (1 <= out_h <= MAX_SIDE and 1 <= out_w <= MAX_SIDE):
        raise ReelkitError(f"output size must lie in 1 .. {MAX_SIDE} pixels, got {out_h}x{out_w}")
    scale = max(out_h / src_h, out_w / src_w)
    return max(out_h, round(src_h * scale)), max(out_w, round(src_w * scale)), out_h, out_w


def _centre_crop(frame: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    top = (frame.shape[0] - out_h) // 2
    left = (frame.shape[1] - out_w) // 2
    return frame[top: top + out_h, left: left + out_w]


def _timed_frames(path: Path) -> Iterator[tuple[float, object]]:
    """(timestamp in seconds, frame handle) in presentation order; PNG folders tick at FRAME_FOLDER_FPS."""
    if path.is_dir():
        for index, file in enumerate(_frame_files(path)):
            yield index / FRAME_FOLDER_FPS, file
        return
    with _open_container(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        origin = None
        try:
            for frame in container.decode(stream):
                t = frame.time if frame.time is not None else 0.0
                origin = t if origin is None else origin
                yield t - origin, frame
        except av.error.FFmpegError as error:
            raise VideoReadError(f"{path}: corrupt video data ({_short(error)})") from None


def _select_frames(timed: Iterator[tuple[float, object]], start_s: float, step: float | None,
                   num_frames: int | None) -> Iterator[object]:
    """Pick frames from a timed stream: every frame from ``start_s`` on, or, with ``step`` (1/fps),
    for output frame k the latest source frame at or before ``start_s + k * step``."""
    eps = 1e-6
    taken = 0
    target = start_s
    previous: tuple[float, object] | None = None
    for t, handle in timed:
        if step is None:
            if t + eps >= start_s:
                yield handle
                taken += 1
        else:
            while previous is not None and previous[0] <= target + eps < t:
                yield previous[1]
                taken += 1
                target += step
                if taken == num_frames:
                    return
            previous = (t, handle)
        if taken == num_frames:
            return
    if step is not None and previous is not None and previous[0] <= target + eps:
        yield previous[1]  # the last source frame covers its own slot at the end of the stream


def _to_rgb(handle: object, resized_h: int, resized_w: int) -> np.ndarray:
    if isinstance(handle, Path):
        try:
            with Image.open(handle) as image:
                image = image.convert("RGB")
                if image.size != (resized_w, resized_h):
                    image = image.resize((resized_w, resized_h), Image.Resampling.LANCZOS)
                return np.asarray(image)
        except OSError as error:
            raise VideoReadError(f"{handle}: not a readable PNG ({_short(error)})") from None
    return handle.to_ndarray(format="rgb24", width=resized_w, height=resized_h, interpolation="AREA")


def read_video(path: str | os.PathLike, num_frames: int | None = None, fps: float | None = None,
               size: int | tuple[int, int] | None = None, start_s: float = 0.0,
               progress: Callable[[], None] | None = None) -> torch.Tensor:
    """Read a clip into a ``(C, T, H, W)`` float tensor in ``[-1, 1]``.

    Args:
        path: a video file (mp4, webm, gif, ...) or a folder of PNG frames (read at 8 fps).
        num_frames: frames to return; a count that is not ``1 + 4k`` is rounded down with a notice.
            ``None`` takes every frame from ``start_s`` on, rounded down to ``1 + 4k``.
        fps: resample to this rate by timestamp (nearest earlier frame); ``None`` keeps the source rate.
        size: ``S`` for an ``S x S`` centre crop of the frame resized to cover it, ``(H, W)`` for a
            rectangle; ``None`` keeps the source size.
        start_s: skip to this time (seconds) first.
        progress: called after each frame is taken (for progress bars).

    Raises :class:`~reelkit.errors.VideoReadError` for missing, empty, corrupt or too-short input.
    """
    path = Path(path)
    _check_exists(path)
    if num_frames is not None:
        num_frames = round_down_frames(num_frames)
    if fps is not None and not (math.isfinite(fps) and 0 < fps <= 1000):
        raise ReelkitError(f"fps must be a finite number in (0, 1000], got {fps}")
    if not (math.isfinite(start_s) and start_s >= 0):
        raise ReelkitError(f"start time must be a finite number >= 0 s, got {start_s}")

    if num_frames is not None and size is not None:
        check_video_fits(num_frames, *((size, size) if isinstance(size, int) else size))  # before decoding
    frames: list[np.ndarray] = []
    plan = None
    with closing(_timed_frames(path)) as timed:
        for handle in _select_frames(timed, start_s, 1.0 / fps if fps else None, num_frames):
            if plan is None:
                plan = _resize_plan(*_native_size(handle), size)
            frames.append(_centre_crop(_to_rgb(handle, plan[0], plan[1]), plan[2], plan[3]))
            if progress is not None:
                progress()

    if not frames:
        raise VideoReadError(f"{path}: no frames at or after {start_s:g} s")
    if num_frames is not None and len(frames) < num_frames:
        rate = f" at {fps:g} fps" if fps else ""
        raise VideoReadError(f"{path}: only {len(frames)} frames{rate} from {start_s:g} s; {num_frames} requested")
    if num_frames is None:
        if start_s == 0 and fps is None and not path.is_dir():
            promised = probe_video(path).num_frames
            if promised > len(frames) + 1:
                logger.warning("%s: the file promises %d frames but only %d decode (truncated?)", path, promised,
                               len(frames))
        frames = frames[: 1 + 4 * ((len(frames) - 1) // 4)]
    video = torch.from_numpy(np.stack(frames))  # (T, H, W, C) uint8
    return video.permute(3, 0, 1, 2).float().div_(127.5).sub_(1.0)


def _native_size(handle: object) -> tuple[int, int]:
    if isinstance(handle, Path):
        try:
            with Image.open(handle) as image:
                return image.size[1], image.size[0]
        except OSError as error:
            raise VideoReadError(f"{handle}: not a readable PNG ({_short(error)})") from None
    return handle.height, handle.width


def to_uint8_frames(video: torch.Tensor) -> np.ndarray:
    """``(C, T, H, W)`` in ``[-1, 1]`` -> ``(T, H, W, 3)`` uint8 (grey is repeated to RGB)."""
    if video.ndim != 4:
        raise ReelkitError(f"expected a (C, T, H, W) video, got shape {tuple(video.shape)}")
    if video.shape[0] == 1:
        video = video.expand(3, -1, -1, -1)
    if video.shape[0] != 3:
        raise ReelkitError(f"expected 1 or 3 channels, got {video.shape[0]}")
    if not torch.isfinite(video).all():  # NaN would be written as black: a broken model or input, say so
        bad = int((~torch.isfinite(video)).sum())
        raise ReelkitError(f"the video holds {bad} non-finite (NaN or inf) values out of {video.numel()}: the "
                           "model or its inputs are broken; nothing was written")
    pixels = ((video.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return pixels.permute(1, 2, 3, 0).contiguous().numpy()


def _encode(frames: np.ndarray, path: Path, fps: float, codec: str, options: dict[str, str]) -> None:
    # yuv420p needs even sides: pad by repeating the last row / column.
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = options
        for array in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")))
        container.mux(stream.encode(None))


def write_video(video: torch.Tensor, path: str | os.PathLike, fps: float = 8.0, crf: int = 12) -> Path:
    """Write a ``(C, T, H, W)`` video in ``[-1, 1]`` to ``.mp4`` (H.264), ``.webm`` (VP9) or ``.gif``.

    ``crf`` sets H.264/VP9 quality (lower is better; 12 is visually lossless for the demo world).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in WRITERS:
        raise ReelkitError(f"{path}: cannot write '{suffix or 'no suffix'}'; use one of {', '.join(WRITERS)}")
    if not (math.isfinite(fps) and 0 < fps <= 1000):
        raise ReelkitError(f"fps must be a finite number in (0, 1000], got {fps}")
    frames = to_uint8_frames(video)
    with atomic_path(path) as tmp:
        if suffix == ".gif":
            images = [Image.fromarray(f) for f in frames]
            images[0].save(tmp, save_all=True, append_images=images[1:], loop=0,
                           duration=max(20, round(1000 / fps)), optimize=False)
        elif suffix == ".mp4":
            _encode(frames, tmp, fps, "libx264", {"crf": str(crf), "preset": "medium"})
        else:
            _encode(frames, tmp, fps, "libvpx-vp9", {"crf": str(crf * 2), "b": "0"})
    return path


def write_frames(video: torch.Tensor, folder: str | os.PathLike) -> Path:
    """Write each frame as ``frame_0000.png`` ... into ``folder`` (which ``read_video`` reads back)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for index, frame in enumerate(to_uint8_frames(video)):
        with atomic_path(folder / f"frame_{index:04d}.png") as tmp:
            Image.fromarray(frame).save(tmp, format="PNG")
    return folder


def contact_sheet(video: torch.Tensor, path: str | os.PathLike, columns: int | None = None,
                  max_frames: int = 64, gap: int = 2) -> Path:
    """Save frames of a ``(C, T, H, W)`` video as one PNG grid (evenly spaced if over ``max_frames``)."""
    frames = to_uint8_frames(video)
    if len(frames) > max_frames:
        frames = frames[np.linspace(0, len(frames) - 1, max_frames).round().astype(int)]
    count, height, width, _ = frames.shape
    columns = columns or min(count, max(1, math.ceil(math.sqrt(count * height / width))))
    rows = math.ceil(count / columns)
    sheet = np.full((rows * height + (rows - 1) * gap, columns * width + (columns - 1) * gap, 3), 255, np.uint8)
    for index, frame in enumerate(frames):
        r, c = divmod(index, columns)
        sheet[r * (height + gap): r * (height + gap) + height, c * (width + gap): c * (width + gap) + width] = frame
    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(sheet).save(tmp, format="PNG")
    return path
