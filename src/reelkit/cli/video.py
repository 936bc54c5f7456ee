"""``reelkit video``: inspect and convert video files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from reelkit.cli.app import app
from reelkit.cli.common import check_output, console, progress_bars

video_app = typer.Typer(help="Video files: inspect, resample, crop, contact sheets.", no_args_is_help=True)
app.add_typer(video_app, name="video")



@video_app.command("info")
def video_info(path: Annotated[Path, typer.Argument(help="Video file or folder of PNG frames.")]) -> None:
    """Size, frame rate, length (frames that decode; a header that promises more is reported) and codec."""
    from reelkit.data.video_io import count_frames, probe_video

    meta = probe_video(path)
    with console.status("counting frames"):
        frames, corrupt = count_frames(path)
    length = f"{frames} frames"
    if corrupt or frames != meta.num_frames:
        length += f" (the header says {meta.num_frames}{'; the data ends in corruption' if corrupt else ''})"
    console.print(f"{meta.path}: {meta.width}x{meta.height}, {meta.fps:g} fps, {length}, "
                  f"{meta.duration_s:.2f} s, {meta.codec}", highlight=False)


@video_app.command("convert")
def video_convert(
    path: Annotated[Path, typer.Argument(help="Video file or folder of PNG frames.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output .mp4, .gif, .webm or .png (sheet).")],
    frames: Annotated[int | None, typer.Option(help="Frames to keep, 1+4k (others round down).")] = None,
    fps: Annotated[float | None, typer.Option(help="Resample to this frame rate.")] = None,
    size: Annotated[int | None, typer.Option(help="Resize and centre-crop to SIZE x SIZE.")] = None,
    start: Annotated[float, typer.Option(help="Start time in seconds.")] = 0.0,
) -> None:
    """Resample, trim and centre-crop a clip the way reelkit models read it; write a video or a contact sheet."""
    from reelkit.data.video_io import WRITERS, contact_sheet, probe_video, read_video, write_video

    check_output(output, (*WRITERS, ".png"), path)
    with progress_bars() as task:
        video = read_video(path, num_frames=frames, fps=fps, size=size, start_s=start,
                           progress=task("reading", frames))
    if output.suffix.lower() == ".png":
        contact_sheet(video, output)
    else:
        write_video(video, output, fps=fps or probe_video(path).fps)
    _, t, h, w = video.shape
    console.print(f"wrote {output} ({t} frames, {h}x{w})")
