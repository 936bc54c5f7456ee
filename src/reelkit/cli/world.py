"""``reelkit world``: render, list and sample the demo world's captioned clips."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer

from reelkit.cli.app import app
from reelkit.cli.common import check_number, check_output, check_seed, console, progress_bars
from reelkit.errors import ReelkitError

world_app = typer.Typer(help="The demo world: procedural captioned clips.", no_args_is_help=True)
app.add_typer(world_app, name="world")



@world_app.command("render")
def world_render(
    prompt: Annotated[str | None, typer.Argument(help="What to show, in the world's vocabulary.")] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Output .mp4, .gif or .webm.")] = Path("clip.mp4"),
    seed: Annotated[int, typer.Option(help="Draws everything the prompt leaves open.")] = 0,
    frames: Annotated[int, typer.Option(help="Frame count, 1+4k (others round down).")] = 17,
    size: Annotated[int, typer.Option(help="Height (and width), a multiple of 8.")] = 64,
    width: Annotated[int | None, typer.Option(help="Width, if not square.")] = None,
    fps: Annotated[float, typer.Option(help="Frame rate of the written file.")] = 8.0,
    random: Annotated[bool, typer.Option("--random", help="Render a random scene instead of a prompt.")] = False,
    sheet: Annotated[Path | None, typer.Option(help="Also save a contact-sheet PNG here.")] = None,
) -> None:
    """Render a demo-world clip from a prompt (or --random) to a video file."""
    from reelkit.conventions import as_height_width, round_down_frames
    from reelkit.data.captions import drop_unrendered_words, parse_prompt
    from reelkit.data.video_io import WRITERS, contact_sheet, write_video
    from reelkit.data.world import render_clip

    if (prompt is None) == (not random):
        raise ReelkitError("give a PROMPT or --random (not both)")
    check_output(output, WRITERS)
    if sheet is not None:
        check_output(sheet, (".png",), output)
    check_seed(seed)
    check_number("--fps", fps, 0.1, 1000.0)
    height_width = as_height_width((size, width or size))
    frames = round_down_frames(frames)
    if prompt is not None:
        parse_prompt(prompt)  # fail on unknown words before any work
        notice = drop_unrendered_words(prompt)[1]
        if notice is not None:
            logging.getLogger("reelkit").warning(notice)
    with progress_bars() as task:
        advance = task("rendering", frames)
        clip = render_clip(seed, frames, height_width, prompt=None if random else prompt, progress=advance)
    write_video(clip.video, output, fps=fps)
    if sheet is not None:
        contact_sheet(clip.video, sheet)
    console.print(f"caption: {clip.caption}")
    console.print(f"labels:  {json.dumps(clip.labels)}", highlight=False)
    console.print(f"wrote {output} ({frames} frames, {height_width[0]}x{height_width[1]}, {fps:g} fps)")


@world_app.command("vocab")
def world_vocab() -> None:
    """List the shapes, colours, motions, backgrounds and every word a prompt may use."""
    from reelkit.data import captions

    for title, words in captions.vocabulary_groups():
        console.print(f"[bold]{title}[/]: {words}")
    console.print(f"[bold]all words[/]: {' '.join(sorted(captions.VOCABULARY))}")
    console.print(f"[bold]accepted, not drawn[/] (every object has one size and one speed): "
                  f"{' '.join(sorted(captions.UNRENDERED_WORDS))}")


@world_app.command("sample")
def world_sample(
    count: Annotated[int, typer.Option(help="How many captions.")] = 5,
    seed: Annotated[int, typer.Option(help="First seed.")] = 0,
) -> None:
    """Print random captions with their labels (no rendering)."""
    from reelkit.data.world import random_scene

    for s in range(seed, seed + count):
        console.print(f"{s}: {random_scene(s)[1]}", highlight=False)
