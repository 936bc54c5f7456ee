"""Generate videos to files: one prompt, or a prompts file sharded across processes and resumable.

Batch mode writes ``<out_dir>/<index>_<slug>.mp4`` per prompt (line ``index`` of the file, from 0), with seed
``seed + index`` so a clip does not depend on how prompts are split between processes. Outputs that exist
are skipped, so a rerun finishes an interrupted batch. Under ``accelerate launch`` or ``torchrun``, process
``r`` of ``n`` takes prompts ``r, r + n, r + 2n, ...``.

>>> import tempfile
>>> from pathlib import Path
>>> from reelkit.generation import GenerationSettings, generate_batch, read_prompts
>>> from reelkit.pipelines.text_to_video import tiny_pipeline
>>> folder = Path(tempfile.mkdtemp())
>>> _ = (folder / "prompts.txt").write_text("a red circle moving right\\n\\na blue star spinning\\n")
>>> prompts = read_prompts(folder / "prompts.txt")        # blank lines are skipped
>>> settings = GenerationSettings(steps=2, frames=5, size=32)
>>> [p.name for p in generate_batch(tiny_pipeline(), prompts, folder / "out", settings)]
['0000_a-red-circle-moving-right.mp4', '0001_a-blue-star-spinning.mp4']
>>> generate_batch(tiny_pipeline(), prompts, folder / "out", settings)   # done already: nothing to do
[]
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from reelkit.errors import ReelkitError
from reelkit.models.text import prepare_prompt


@dataclass
class GenerationSettings:
    """What every clip of a run shares."""

    steps: int = 50
    guidance: float = 5.0
    seed: int = 0
    frames: int = 17
    size: int = 64
    negative_prompt: str | None = None
    fps: float = 8.0


def read_prompts(path: str | Path) -> list[str]:
    """Non-empty lines of a text file."""
    path = Path(path)
    if not path.is_file():
        raise ReelkitError(f"{path}: no such prompts file")
    try:
        lines = path.read_text().splitlines()
    except UnicodeDecodeError:
        raise ReelkitError(f"{path}: not a text file (one prompt per line)") from None
    prompts = [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise ReelkitError(f"{path}: holds no prompts")
    return prompts


def output_name(index: int, prompt: str, suffix: str = ".mp4") -> str:
    slug = "-".join(re.findall(r"[a-z0-9]+", prompt.lower()))[:60].strip("-") or "clip"
    return f"{index:04d}_{slug}{suffix}"


def generate_video(pipe, prompt: str, settings: GenerationSettings, seed: int | None = None,
                   on_step: Callable[[], None] | None = None) -> torch.Tensor:
    """One clip ``(C, T, H, W)`` in ``[-1, 1]``; ``on_step`` is called after every denoising step."""
    def callback(pipeline, step, timestep, tensors):
        if on_step is not None:
            on_step()
        return tensors

    generator = torch.Generator().manual_seed(settings.seed if seed is None else seed)
    out = pipe(prompt, negative_prompt=settings.negative_prompt, num_frames=settings.frames, height=settings.size,
               width=settings.size, num_inference_steps=settings.steps, guidance_scale=settings.guidance,
               generator=generator, callback_on_step_end=callback)
    return out.frames[0]


def process_shard() -> tuple[int, int]:
    """(rank, world size) of this process under accelerate/torchrun; (0, 1) when run alone."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    return state.process_index, state.num_processes


def generate_batch(pipe, prompts: list[str], out_dir: str | Path, settings: GenerationSettings,
                   rank: int = 0, world_size: int = 1, suffix: str = ".mp4",
                   on_clip: Callable[[Path], None] | None = None,
                   on_step: Callable[[], None] | None = None, write: bool = True) -> list[Path]:
    """Write this process's share of ``prompts`` into ``out_dir``; return the files it wrote.

    All prompts are checked before any work, so a bad line fails the run at once. The clips already in
    ``out_dir`` are skipped, as they stood when the call began. ``write=False``: generate the same clips without
    writing them (a helper rank of a context-parallel group, whose first rank writes).
    """
    from reelkit.data.video_io import write_video

    readable = []  # as the text encoder reads them; files keep the prompts' own names
    for number, prompt in enumerate(prompts, 1):
        try:
            readable.append(prepare_prompt(prompt, pipe.tokenizer))
        except ReelkitError as error:
            raise ReelkitError(f"prompt {number} ('{prompt}'): {error}") from None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    # decided before any clip is written, so the ranks of a context-parallel group agree on the work
    todo = [(index, out_dir / output_name(index, prompts[index], suffix)) for index in range(rank, len(prompts),
                                                                                             world_size)]
    for index, path in [(index, path) for index, path in todo if not path.exists()]:
        video = generate_video(pipe, readable[index], settings, seed=settings.seed + index, on_step=on_step)
        if write:
            write_video(video, path, fps=settings.fps)  # atomic: an interrupted write leaves no partial file
        written.append(path)
        if on_clip is not None:
            on_clip(path)
    return written


__all__ = ["GenerationSettings", "generate_batch", "generate_video", "output_name", "process_shard", "read_prompts"]
