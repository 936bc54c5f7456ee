"""``reelkit interpolate | animate | extend``: MarDini's tasks on the command line (registered on the root app).

Cheap checks come first (output suffix, frame counts, image sizes), then the model loads, so a mistake
costs nothing and overwrites nothing.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from reelkit.cli.app import app
from reelkit.cli.common import IMAGE_SUFFIXES, check_number, check_output, check_seed, console, progress_bars
from reelkit.errors import ReelkitError, ShapeError

OutputOption = Annotated[Path, typer.Option("--output", "-o", help="Output .mp4, .gif or .webm.")]
FramesOption = Annotated[int, typer.Option(help="Frames in the clip, 1+4k (others round down), known ones included.")]
LongOption = Annotated[int | None, typer.Option(
    "--long", help="Hierarchical generation of N frames (1+4k): key frames across the clip first, then "
    "interpolation between them.")]
StepsOption = Annotated[int, typer.Option(help="Denoising steps of the generator (the planner runs once).")]
SeedOption = Annotated[int, typer.Option(help="Noise seed.")]
SizeOption = Annotated[int | None, typer.Option(
    help="Resize and centre-crop inputs to SIZE x SIZE (a multiple of 16; the bundled model is trained at 64). "
    "Default: the inputs' own size.")]
ModelOption = Annotated[Path | None, typer.Option("--model", help="A MarDini pipeline folder (default: the "
                                                  "bundled one).")]
FpsOption = Annotated[float, typer.Option(help="Frame rate of the written file.")]
SheetOption = Annotated[Path | None, typer.Option(help="Also save a contact-sheet PNG here.")]


def _read_image(path: Path, size: int | None):
    """``(3, H, W)`` in [-1, 1] from an image file."""
    from reelkit.data.video_io import read_video

    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise ReelkitError(f"{path}: not an image ({', '.join(IMAGE_SUFFIXES)})")
    return read_video(path, num_frames=1, size=size)[:, 0]


def _check_common(output: Path, steps: int, guidance: float, size: int | None, sheet: Path | None, fps: float,
                  seed: int, *inputs: Path | None) -> None:
    from reelkit.conventions import check_size
    from reelkit.data.video_io import WRITERS

    check_output(output, WRITERS, *inputs)
    if not output.parent.is_dir():
        raise ReelkitError(f"{output.parent}: no such folder for the output")
    if sheet is not None:
        check_output(sheet, (".png",), output, *inputs)
    if steps < 1:
        raise ReelkitError(f"--steps must be at least 1, got {steps}")
    check_number("--guidance", guidance, 1.0, 100.0, "1 turns guidance off")
    check_number("--fps", fps, 0.1, 1000.0)
    check_seed(seed)
    if size is not None and check_size(size) % 16:
        raise ShapeError(f"--size {size} is not a multiple of 16")


MAX_LONG_FRAMES = 1025  # hierarchical generation beyond this is hours on a CPU; refuse it up front


def _frame_count(frames: int, long: int | None) -> int:
    from reelkit.conventions import round_down_frames

    if long is not None and not 1 <= long <= MAX_LONG_FRAMES:
        raise ReelkitError(f"--long must lie in 1 .. {MAX_LONG_FRAMES} frames, got {long}")
    return round_down_frames(long if long is not None else frames)


def _check_sides(pipe, height: int, width: int) -> None:
    multiple = pipe.spatial_multiple
    if height % multiple or width % multiple:
        raise ShapeError(f"frames are {width}x{height}; sides must be multiples of {multiple} (pass --size)")


def _run(pipe, known, indices: list[int], num_frames: int, long: int | None, steps: int, guidance: float,
         seed: int, output: Path, fps: float, sheet: Path | None, what: str) -> None:
    """Check the sides, generate (one window or hierarchically), write, report."""
    import torch

    from reelkit.mardini.masking import check_known_indices

    check_known_indices(num_frames, indices)
    _check_sides(pipe, *known.shape[-2:])
    settings = dict(num_inference_steps=steps, guidance_scale=guidance, generator=torch.Generator().manual_seed(seed))
    started = time.perf_counter()
    with progress_bars() as task:
        advance = task("generating", None)
        if long is not None:
            video = pipe.long(known, indices, num_frames, **settings).frames[0]
        else:
            video = pipe(known, indices, num_frames, **settings).frames[0]
        advance()
    mode = " (hierarchical)" if long is not None else ""
    _write(video, output, fps, sheet, f"{what}: {video.shape[1]} frames{mode}", steps, guidance, seed, started)


def _write(video, output: Path, fps: float, sheet: Path | None, what: str, steps: int, guidance: float, seed: int,
           started: float) -> None:
    from reelkit.data.video_io import contact_sheet, write_video

    elapsed = time.perf_counter() - started
    write_video(video, output, fps=fps)
    if sheet is not None:
        contact_sheet(video, sheet)
    height, width = video.shape[-2:]
    console.print(f"wrote {output} ({what}, {width}x{height}, {steps} steps, guidance {guidance:g}, seed {seed}) "
                  f"in {elapsed:.1f} s")


def _load(model: Path | None):
    from reelkit.pipelines.masked_video import load_masked_video

    pipe = load_masked_video(model)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@app.command()
def interpolate(
    first: Annotated[Path, typer.Argument(help="The first frame (an image).")],
    last: Annotated[Path, typer.Argument(help="The last frame (an image of the same size).")],
    output: OutputOption = Path("interpolated.mp4"),
    frames: FramesOption = 17,
    long: LongOption = None,
    steps: StepsOption = 25,
    guidance: Annotated[float, typer.Option(help="Guidance on the planning signal (1 = off, MarDini's choice "
                                            "for interpolation).")] = 1.0,
    seed: SeedOption = 0,
    size: SizeOption = None,
    model: ModelOption = None,
    fps: FpsOption = 8.0,
    sheet: SheetOption = None,
) -> None:
    """Video interpolation (MarDini): the frames between FIRST and LAST."""
    import torch

    _check_common(output, steps, guidance, size, sheet, fps, seed, first, last, model)
    num_frames = _frame_count(frames, long)
    a, b = _read_image(first, size), _read_image(last, size)
    if a.shape != b.shape:
        raise ShapeError(f"{first.name} is {a.shape[2]}x{a.shape[1]} but {last.name} is {b.shape[2]}x{b.shape[1]}; "
                         "give images of one size (or --size)")
    _run(_load(model), torch.stack([a, b], 1), [0, num_frames - 1], num_frames, long, steps, guidance, seed,
         output, fps, sheet, "interpolation")


@app.command()
def animate(
    image: Annotated[Path, typer.Argument(help="The known frame (an image).")],
    output: OutputOption = Path("animated.mp4"),
    frames: FramesOption = 17,
    at: Annotated[int, typer.Option(help="Where the image sits in the clip (0: first frame; -1: last).")] = 0,
    long: LongOption = None,
    steps: StepsOption = 25,
    guidance: Annotated[float, typer.Option(help="Guidance on the planning signal (MarDini: 2.5 for "
                                            "image-to-video; 1 = off).")] = 2.5,
    seed: SeedOption = 0,
    size: SizeOption = None,
    model: ModelOption = None,
    fps: FpsOption = 8.0,
    sheet: SheetOption = None,
) -> None:
    """Image-to-video (MarDini): a clip in which IMAGE is frame --at."""
    _check_common(output, steps, guidance, size, sheet, fps, seed, image, model)
    num_frames = _frame_count(frames, long)
    position = at + num_frames if at < 0 else at
    if not 0 <= position < num_frames:
        raise ShapeError(f"--at {at} is outside a clip of {num_frames} frames")
    still = _read_image(image, size)
    _run(_load(model), still[:, None], [position], num_frames, long, steps, guidance, seed, output, fps, sheet,
         "image-to-video")


@app.command()
def extend(
    video: Annotated[Path, typer.Argument(help="The clip to continue (a video file or a folder of PNGs).")],
    output: OutputOption = Path("extended.mp4"),
    add: Annotated[int | None, typer.Option(help="Frames to add after the clip (the total rounds down to "
                                            "1+4k).")] = None,
    long: LongOption = None,
    context: Annotated[int, typer.Option(help="Known frames each window of new frames is conditioned on.")] = 5,
    steps: StepsOption = 25,
    guidance: Annotated[float, typer.Option(help="Guidance on the planning signal (1 = off).")] = 1.0,
    seed: SeedOption = 0,
    size: SizeOption = None,
    read_fps: Annotated[float | None, typer.Option("--read-fps", help="Resample the input to this rate first.")
                        ] = None,
    model: ModelOption = None,
    fps: FpsOption = 8.0,
    sheet: SheetOption = None,
) -> None:
    """Video expansion (MarDini): continue VIDEO by --add frames (or to --long N frames, hierarchically)."""
    import torch

    from reelkit.conventions import round_down_frames
    from reelkit.data.video_io import read_video

    _check_common(output, steps, guidance, size, sheet, fps, seed, video, model)
    if read_fps is not None:
        check_number("--read-fps", read_fps, 0.1, 1000.0)
    if (add is None) == (long is None):
        raise ReelkitError("give --add N (frames to add) or --long N (total frames, hierarchical), not both")
    if context < 1:
        raise ReelkitError(f"--context must be at least 1, got {context}")
    clip = read_video(video, fps=read_fps, size=size)  # (3, T, H, W), T = 1+4k
    length = clip.shape[1]
    total = round_down_frames(long if long is not None else length + add)
    if total <= length:
        raise ShapeError(f"{video.name} has {length} frames; {total} in all adds nothing (raise --add/--long)")
    pipe = _load(model)
    if long is not None:
        _run(pipe, clip, list(range(length)), total, long, steps, guidance, seed, output, fps, sheet, "expansion")
        return
    _check_sides(pipe, *clip.shape[-2:])
    started = time.perf_counter()
    with progress_bars() as task:
        advance = task("generating", None)
        extended = pipe.extend(clip, total - length, context=context, num_inference_steps=steps,
                               guidance_scale=guidance, generator=torch.Generator().manual_seed(seed)).frames[0]
        advance()
    _write(extended, output, fps, sheet, f"expansion: {length} + {total - length} frames", steps, guidance, seed,
           started)
