"""What every command shares: the consoles, progress bars, and the checks of outputs, numbers and seeds."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from reelkit.errors import ReelkitError

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@contextmanager
def progress_bars() -> Iterator[Callable[[str, int | None], Callable[[], None]]]:
    """Yield ``task(description, total) -> advance``; bars draw on a terminal and vanish when done.

    ``total=None`` draws an open-ended bar (a count with no end known in advance)."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err_console, transient=True) as progress:
        def task(description: str, total: int | None) -> Callable[[], None]:
            task_id = progress.add_task(description, total=total)
            return lambda: progress.advance(task_id)

        yield task


def check_output(path: Path, suffixes: tuple[str, ...], *inputs: Path | None) -> None:
    """Refuse an output that could not be written or would destroy something: a wrong suffix, an existing
    folder, a parent that is a file, or one of the command's own ``inputs`` (the write replaces the output
    atomically, only once the command has succeeded)."""
    if path.suffix.lower() not in suffixes:
        raise ReelkitError(f"{path}: output must end in {' or '.join(suffixes)}")
    if path.is_dir():
        raise ReelkitError(f"{path}: is a folder; give a file name for the output")
    parent = next((p for p in path.absolute().parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise ReelkitError(f"{parent}: is a file, so {path} cannot be written")
    for source in inputs:
        if source is not None and same_path(path, source):
            raise ReelkitError(f"{path}: is also an input of this command; write the output elsewhere")


def check_number(option: str, value: float, low: float, high: float, hint: str = "") -> float:
    """A finite ``value`` in ``[low, high]``, else a one-line error naming ``option``."""
    if not (math.isfinite(value) and low <= value <= high):
        extra = f" ({hint})" if hint else ""
        raise ReelkitError(f"{option} must be a finite number in [{low:g}, {high:g}]{extra}, got {value}")
    return value


def check_seed(seed: int) -> int:
    """Seeds are what ``torch.Generator.manual_seed`` takes: 0 to 2**63 - 1."""
    if not 0 <= seed < 2**63:
        raise ReelkitError(f"--seed must lie in 0 .. 2**63 - 1, got {seed}")
    return seed


def same_path(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def load_generator(model: str | None, default: str = "student"):
    """The pipeline ``--model`` names: ``student`` (the bundled 4-step T2V-Turbo student), ``teacher`` (the
    bundled 50-step teacher) or a pipeline folder; ``None``: ``default``."""
    from reelkit.pipelines.text_to_video import load_text_to_video

    pipe = load_text_to_video(model or default)
    pipe.set_progress_bar_config(disable=True)
    return pipe
