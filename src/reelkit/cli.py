"""The ``reelkit`` command line: one sub-app per capability, ``--help`` everywhere.

User mistakes (bad options, sizes, frame counts, files, prompt words) print one ``error:`` line and
exit with code 2; notices (such as a frame count rounded down to ``1 + 4k``) print as ``notice:``.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from reelkit.errors import ReelkitError

try:  # typer >= 0.29 vendors click
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover - older typer uses click itself
    from click import exceptions as click_errors

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)

app = typer.Typer(help="reelkit: fast, memory-efficient video diffusion.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
world_app = typer.Typer(help="The demo world: procedural captioned clips.", no_args_is_help=True)
video_app = typer.Typer(help="Video files: inspect, resample, crop, contact sheets.", no_args_is_help=True)
train_app = typer.Typer(help="Training recipes (YAML configs; accelerate for several processes).",
                        no_args_is_help=True)
app.add_typer(world_app, name="world")
app.add_typer(video_app, name="video")
vae_app = typer.Typer(help="CV-VAE: reconstruct clips, encode to and decode from latents.", no_args_is_help=True)
app.add_typer(train_app, name="train")
app.add_typer(vae_app, name="vae")
eval_app = typer.Typer(help="Evaluate clips: prompt adherence read by the demo-world judge.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")
calibrate_app = typer.Typer(help="Calibrate training-free accelerators on a few prompts.", no_args_is_help=True)
app.add_typer(calibrate_app, name="calibrate")


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


def _check_output(path: Path, suffixes: tuple[str, ...], *inputs: Path | None) -> None:
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
        if source is not None and _same_path(path, source):
            raise ReelkitError(f"{path}: is also an input of this command; write the output elsewhere")


def check_number(option: str, value: float, low: float, high: float, hint: str = "") -> float:
    """A finite ``value`` in ``[low, high]``, else a one-line error naming ``option``."""
    import math

    if not (math.isfinite(value) and low <= value <= high):
        extra = f" ({hint})" if hint else ""
        raise ReelkitError(f"{option} must be a finite number in [{low:g}, {high:g}]{extra}, got {value}")
    return value


def check_seed(seed: int) -> int:
    """Seeds are what ``torch.Generator.manual_seed`` takes: 0 to 2**63 - 1."""
    if not 0 <= seed < 2**63:
        raise ReelkitError(f"--seed must lie in 0 .. 2**63 - 1, got {seed}")
    return seed


def _same_path(a: Path, b: Path) -> bool:
    import os

    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


@app.callback()
def _options(
    debug: Annotated[bool, typer.Option("--debug", help="Show the traceback of an internal error (exit code 1).")
                     ] = False,
) -> None:
    """reelkit: fast, memory-efficient video diffusion. Bad input is one 'error:' line and exit code 2."""


# --------------------------------------------------------------------------------------------- info

@app.command()
def info() -> None:
    """Versions, compute device and bundled models."""
    import importlib.metadata as md

    import torch

    from reelkit.paths import bundled_models, shared_data_clips

    table = Table(show_header=False, box=None)
    for package in ("reelkit", "torch", "diffusers", "accelerate", "peft", "safetensors", "av", "torchmetrics"):
        try:
            table.add_row(package, md.version(package))
        except md.PackageNotFoundError:
            table.add_row(package, "not installed")
    device = f"cuda ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "cpu"
    table.add_row("device", f"{device}, {torch.get_num_threads()} CPU threads")
    models = bundled_models()
    table.add_row("bundled models", ", ".join(models) if models else "none yet")
    clips = shared_data_clips()
    table.add_row("shared clips", ", ".join(c.name for c in clips) if clips else "none found")
    console.print(table)


# -------------------------------------------------------------------------------------------- world

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
    _check_output(output, WRITERS)
    if sheet is not None:
        _check_output(sheet, (".png",), output)
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

    for title, names in (("shapes", captions.SHAPE_SYNONYMS), ("colours", captions.COLOR_SYNONYMS),
                         ("motions", captions.MOTION_KEYWORDS), ("backgrounds", captions.BACKGROUND_COLOR_SYNONYMS),
                         ("textures", captions.TEXTURE_WORDS)):
        console.print(f"[bold]{title}[/]: " + "; ".join(f"{k} ({', '.join(v)})" for k, v in names.items()))
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


# -------------------------------------------------------------------------------------------- video

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

    _check_output(output, (*WRITERS, ".png"), path)
    with progress_bars() as task:
        video = read_video(path, num_frames=frames, fps=fps, size=size, start_s=start,
                           progress=task("reading", frames))
    if output.suffix.lower() == ".png":
        contact_sheet(video, output)
    else:
        write_video(video, output, fps=fps or probe_video(path).fps)
    _, t, h, w = video.shape
    console.print(f"wrote {output} ({t} frames, {h}x{w})")


# -------------------------------------------------------------------------------------------- train

@train_app.command("vae")
def train_vae(
    config: Annotated[Path, typer.Option("--config", "-c", help="YAML config, e.g. configs/cvvae.yaml.")],
    output_dir: Annotated[str | None, typer.Option(help="Override the config's output_dir.")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Override the config's max_steps.")] = None,
    init_from: Annotated[str | None, typer.Option(
        "--init-from", help="Warm-start from this model folder (e.g. the committed asset) when OUTPUT_DIR holds "
                            "no checkpoint.")] = None,
) -> None:
    """Train the image VAE or the CV-VAE (stage set in the config); resumes from OUTPUT_DIR/checkpoint."""
    from reelkit.train.vae import run

    model_dir = run(config, output_dir=output_dir, max_steps=max_steps, init_from=init_from)
    console.print(f"trained model: {model_dir}")


@train_app.command("t2v")
def train_t2v(
    config: Annotated[Path, typer.Option("--config", "-c", help="YAML config, e.g. configs/teacher.yaml.")],
    output_dir: Annotated[str | None, typer.Option(help="Override the config's output_dir.")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Override the config's max_steps.")] = None,
    init_from: Annotated[str | None, typer.Option(
        "--init-from", help="Warm-start from this pipeline folder (e.g. src/reelkit/assets/teacher) when "
                            "OUTPUT_DIR holds no checkpoint.")] = None,
) -> None:
    """Train the text-to-video teacher (VideoDiT + text encoder) on a latent cache it builds once."""
    from reelkit.train.t2v import run

    console.print(f"trained pipeline: {run(config, output_dir=output_dir, max_steps=max_steps, init_from=init_from)}")


@train_app.command("judge")
def train_judge(
    config: Annotated[Path, typer.Option("--config", "-c", help="YAML config, e.g. configs/judge.yaml.")],
    output_dir: Annotated[str | None, typer.Option(help="Override the config's output_dir.")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Override the config's max_steps.")] = None,
) -> None:
    """Train the demo-world judge (the independent classifier that grades generators)."""
    from reelkit.train.judge import run

    console.print(f"trained judge: {run(config, output_dir=output_dir, max_steps=max_steps)}")


@train_app.command("rewards")
def train_rewards(
    config: Annotated[Path, typer.Option("--config", "-c", help="YAML config, e.g. configs/rewards.yaml.")],
    output_dir: Annotated[str | None, typer.Option(help="Override the config's output_dir.")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Override the config's max_steps.")] = None,
) -> None:
    """Train the demo rewards (image-text and video-text dual encoders) contrastively on the demo world."""
    from reelkit.train.rewards import run

    console.print(f"trained rewards: {run(config, output_dir=output_dir, max_steps=max_steps)}")


@train_app.command("distill")
def train_distill(
    config: Annotated[Path, typer.Option("--config", "-c", help="YAML config, e.g. configs/turbo.yaml.")],
    output_dir: Annotated[str | None, typer.Option(help="Override the config's output_dir.")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Override the config's max_steps.")] = None,
) -> None:
    """Distil a few-step student from the teacher (T2V-Turbo: consistency distillation + reward feedback)."""
    from reelkit.train.distill import run

    console.print(f"student pipeline: {run(config, output_dir=output_dir, max_steps=max_steps)}")


@train_app.command("mardini")
def train_mardini(
    config: Annotated[Path, typer.Option("--config", "-c", help="YAML config, e.g. configs/mardini.yaml.")],
    output_dir: Annotated[str | None, typer.Option(help="Override the config's output_dir.")] = None,
) -> None:
    """Train MarDini's planner and generator through the progressive stages named in the config."""
    from reelkit.train.mardini import run

    console.print(f"MarDini pipeline: {run(config, output_dir=output_dir)}")


@train_app.command("export")
def train_export(
    model_dir: Annotated[Path, typer.Argument(help="A trained model or pipeline folder, e.g. runs/teacher/model.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Destination folder (fp16 safetensors).")],
) -> None:
    """Re-save a trained model (VAE, judge) or text-to-video pipeline as fp16 safetensors, e.g. into
    src/reelkit/assets/<name> to bundle it."""
    from reelkit.train.common import export_fp16, export_pipeline_fp16

    if output.exists() and _same_path(output, model_dir):
        raise ReelkitError(f"{output}: is the folder being exported; export to another folder")
    if output.exists() and not ((output / "config.json").is_file() or (output / "model_index.json").is_file()):
        raise ReelkitError(f"{output}: exists and is not a model folder; refusing to replace it")
    if (model_dir / "model_index.json").is_file():
        export_pipeline_fp16(model_dir, output)
        console.print(f"wrote {output} (pipeline, fp16)")
        return
    from diffusers import AutoencoderKL

    from reelkit.models.judge import WorldJudge
    from reelkit.vae import CVVAE

    classes = {"AutoencoderKL": AutoencoderKL, "CVVAE": CVVAE, "WorldJudge": WorldJudge}
    config = model_dir / "config.json"
    name = json.loads(config.read_text()).get("_class_name") if config.is_file() else None
    if name not in classes:
        raise ReelkitError(f"{model_dir}: not a trained model folder (expected a pipeline or one of "
                           f"{', '.join(classes)})")
    export_fp16(classes[name], model_dir, output)
    console.print(f"wrote {output} ({name}, fp16)")


# ---------------------------------------------------------------------------------------------- vae

ModelOption = Annotated[Path | None, typer.Option("--model", help="CVVAE folder or bundled name, e.g. cvvae_f4 "
                                                  "(default: the bundled cvvae).")]
FramesOption = Annotated[int, typer.Option(help="Frames to read, 1+4k (others round down).")]
SizeOption = Annotated[int, typer.Option(help="Resize and centre-crop to SIZE x SIZE (multiple of 8).")]
FpsOption = Annotated[float | None, typer.Option(help="Resample to this frame rate (default: the file's).")]
ChunkOption = Annotated[int | None, typer.Option(
    "--chunk-frames", help="Bound memory: encode/decode 1+N frames at a time (N a multiple of 4).")]
TileOption = Annotated[int | None, typer.Option("--tile", help="Bound memory: spatial tiles of this many pixels.")]


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def _read_clip(path: Path, frames: int, fps: float | None, size: int, start: float = 0.0):
    """Read ``frames`` frames as the VAE sees them; a still image becomes a 1-frame clip (with a notice)."""
    from reelkit.data.video_io import read_video

    if path.suffix.lower() in IMAGE_SUFFIXES:
        if frames != 1:
            logging.getLogger("reelkit").warning("%s is an image; treating it as 1 frame", path.name)
        frames, fps = 1, None
    with progress_bars() as task:
        return read_video(path, num_frames=frames, fps=fps, size=size, start_s=start, progress=task("reading", frames))


def _clip_fps(path: Path, fps: float | None) -> float:
    from reelkit.data.video_io import FRAME_FOLDER_FPS, probe_video

    if fps is not None:
        return fps
    return FRAME_FOLDER_FPS if path.suffix.lower() in IMAGE_SUFFIXES else probe_video(path).fps


def _load_vae(model: Path | None, chunk_frames: int | None, tile: int | None):
    from reelkit.vae import load_cvvae

    vae = load_cvvae(model)
    if chunk_frames is not None or tile is not None:
        vae.enable_chunking(frames_per_chunk=chunk_frames or 16, tile_size=tile)
    return vae


def _vae_and_clip(path: Path, size: int, frames: int, fps: float | None, start: float, model: Path | None,
                  chunk_frames: int | None, tile: int | None):
    """Check the options, load the CV-VAE, then read the clip (cheap checks first, nothing written yet)."""
    from reelkit.conventions import check_size, round_down_frames

    check_size(size)
    frames = round_down_frames(frames)
    vae = _load_vae(model, chunk_frames, tile)
    return vae, _read_clip(path, frames, fps, size, start)


@vae_app.command("reconstruct")
def vae_reconstruct(
    path: Annotated[Path, typer.Argument(help="Video file, image or folder of PNG frames.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Side-by-side .mp4/.gif/.webm (input | output).")],
    size: SizeOption = 128,
    frames: FramesOption = 33,
    fps: FpsOption = None,
    start: Annotated[float, typer.Option(help="Start time in seconds.")] = 0.0,
    model: ModelOption = None,
    chunk_frames: ChunkOption = None,
    tile: TileOption = None,
) -> None:
    """Encode and decode a clip with the CV-VAE; print PSNR/SSIM and write input and output side by side."""
    import torch

    from reelkit.data.video_io import WRITERS, write_video
    from reelkit.eval.metrics import video_psnr, video_ssim
    from reelkit.vae import reconstruct

    _check_output(output, WRITERS, path, model)
    vae, video = _vae_and_clip(path, size, frames, fps, start, model, chunk_frames, tile)
    with console.status("reconstructing"):
        output_video = reconstruct(vae, video)
    write_video(torch.cat([video, output_video], dim=-1), output, fps=_clip_fps(path, fps))
    console.print(f"PSNR {video_psnr(output_video, video):.2f} dB  SSIM {video_ssim(output_video, video):.4f}  "
                  f"({video.shape[1]} frames -> {1 + (video.shape[1] - 1) // 4} latent frames)", highlight=False)
    console.print(f"wrote {output} (input | reconstruction)")


@vae_app.command("encode")
def vae_encode(
    path: Annotated[Path, typer.Argument(help="Video file, image or folder of PNG frames.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Latents .safetensors.")],
    size: SizeOption = 128,
    frames: FramesOption = 33,
    fps: FpsOption = None,
    model: ModelOption = None,
    chunk_frames: ChunkOption = None,
    tile: TileOption = None,
) -> None:
    """Encode a clip to CV-VAE latents (posterior mean, unscaled) saved as safetensors."""
    import torch

    from reelkit.vae.latents import save_latents

    _check_output(output, (".safetensors",), path, model)
    vae, video = _vae_and_clip(path, size, frames, fps, 0.0, model, chunk_frames, tile)
    with console.status("encoding"), torch.no_grad():
        z = vae.encode(video[None]).latent_dist.mode()[0]
    save_latents(z, output, vae, fps=_clip_fps(path, fps))
    console.print(f"wrote {output} (latents {tuple(z.shape)} from {video.shape[1]} frames)")


@vae_app.command("decode")
def vae_decode(
    path: Annotated[Path, typer.Argument(help="Latents .safetensors written by 'reelkit vae encode'.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output .mp4, .gif or .webm.")],
    model: ModelOption = None,
    image_mode: Annotated[bool, typer.Option("--image-mode", help="Decode each latent as one image.")] = False,
    chunk_frames: ChunkOption = None,
    tile: TileOption = None,
) -> None:
    """Decode CV-VAE latents to a video (1+4(n-1) frames, or n with --image-mode)."""
    import torch

    from reelkit.data.video_io import WRITERS, write_video
    from reelkit.vae.latents import load_latents

    _check_output(output, WRITERS, path, model)
    vae = _load_vae(model, chunk_frames, tile)
    z, fps = load_latents(path, vae)
    with console.status("decoding"), torch.no_grad():
        video = vae.decode(z[None], image_mode=image_mode).sample[0].clamp(-1, 1)
    write_video(video, output, fps=fps if not image_mode else fps / 4)
    console.print(f"wrote {output} ({video.shape[1]} frames, {video.shape[2]}x{video.shape[3]})")


# ----------------------------------------------------------------------------------------- generate

FEW_STEPS = 4  # a consistency student's default step count (T2V-Turbo)


def _load_generator(model: str | None, default: str = "student"):
    """The pipeline ``--model`` names: ``student`` (the bundled 4-step T2V-Turbo student), ``teacher`` (the
    bundled 50-step teacher) or a pipeline folder; ``None``: ``default``."""
    from reelkit.pipelines.text_to_video import load_text_to_video

    pipe = load_text_to_video(model or default)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@app.command()
def generate(
    prompt: Annotated[str | None, typer.Argument(help="What to show, in the model's vocabulary.")] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Output .mp4, .gif or .webm.")] = Path("video.mp4"),
    prompts: Annotated[Path | None, typer.Option("--prompts", help="Batch mode: a file with one prompt per line."
                                                 )] = None,
    out_dir: Annotated[Path | None, typer.Option("--out-dir", help="Batch mode: folder for one mp4 per prompt; "
                                                 "existing ones are skipped.")] = None,
    steps: Annotated[int | None, typer.Option(help="Denoising steps (default: 4 for a distilled student, 50 for "
                                              "the teacher).")] = None,
    guidance: Annotated[float, typer.Option(help="Classifier-free guidance scale (1 = off; a distilled student "
                                            "takes it as an input).")] = 5.0,
    seed: Annotated[int, typer.Option(help="Noise seed (batch mode: seed + line index).")] = 0,
    frames: Annotated[int, typer.Option(help="Frame count, 1+4k.")] = 17,
    size: Annotated[int, typer.Option(help="Height and width, a multiple of 16.")] = 64,
    model: Annotated[str | None, typer.Option(help="'student' (default: the 4-step T2V-Turbo student; the "
                                              "teacher with --cache/--rehash), 'teacher' (50 steps with "
                                              "guidance) or a pipeline folder.")] = None,
    negative_prompt: Annotated[str | None, typer.Option(help="Steer away from this (default: empty).")] = None,
    fps: Annotated[float, typer.Option(help="Frame rate of the written files.")] = 8.0,
    sheet: Annotated[Path | None, typer.Option(help="Also save a contact-sheet PNG here (single prompt).")] = None,
    cache: Annotated[str | None, typer.Option(help="Training-free caching: adacache, adacache-fast or "
                                              "adacache-slow.")] = None,
    moreg: Annotated[bool, typer.Option("--moreg", help="AdaCache: motion regularisation.")] = False,
    codebook: Annotated[Path | None, typer.Option(help="AdaCache: a codebook from 'reelkit calibrate adacache' "
                                                  "(implies --cache adacache).")] = None,
    rehash: Annotated[int | None, typer.Option(help="Step Rehash: run the full model on K key steps only and "
                                               "reuse its deep features on the others.")] = None,
    rehash_schedule: Annotated[Path | None, typer.Option(help="Step Rehash: key steps from 'reelkit calibrate "
                                                         "rehash' (default: the teacher's bundled profile).")] = None,
    slice_: Annotated[str | None, typer.Option("--slice", help="Feature Slicing (exact, lower peak memory): N "
                                               "chunks, a budget such as 2GiB, or auto (fit the free memory).")
                      ] = None,
) -> None:
    """Generate a video from a prompt (or one per line of --prompts) with the text-to-video model."""
    import time

    from reelkit.conventions import is_valid_frame_count
    from reelkit.data.video_io import WRITERS, contact_sheet, write_video
    from reelkit.generation import GenerationSettings, generate_batch, generate_video, process_shard, read_prompts

    batch = prompts is not None or out_dir is not None
    if batch and (prompts is None or out_dir is None or prompt is not None):
        raise ReelkitError("batch mode takes --prompts FILE and --out-dir DIR, and no PROMPT")
    if not batch and prompt is None:
        raise ReelkitError("give a PROMPT (or --prompts FILE --out-dir DIR)")
    if not is_valid_frame_count(frames):
        raise ReelkitError(f"--frames {frames} is not 1+4k (1, 5, 9, 13, 17, ...)")
    if steps is not None and steps < 1:
        raise ReelkitError(f"--steps must be at least 1, got {steps}")
    check_number("--guidance", guidance, 1.0, 100.0, "1 turns guidance off")
    check_number("--fps", fps, 0.1, 1000.0)
    check_seed(seed)
    from reelkit.conventions import check_size, check_video_fits

    check_video_fits(frames, check_size(size), size)
    if batch:
        prompt_list = read_prompts(prompts)
        if out_dir.exists() and not out_dir.is_dir():
            raise ReelkitError(f"{out_dir}: exists and is not a folder")
        if sheet is not None:
            raise ReelkitError("--sheet saves one prompt's contact sheet; batch mode (--prompts) takes no --sheet")
    else:
        inputs = (Path(model) if model else None, codebook, rehash_schedule)
        _check_output(output, WRITERS, *inputs)
        if not output.parent.is_dir():
            raise ReelkitError(f"{output.parent}: no such folder for the output")
        if sheet is not None:
            _check_output(sheet, (".png",), output, *inputs)
    cache_config = _cache_config(cache, moreg, codebook)
    from reelkit.accel.slicing import slicing_config_from_option

    slicing_config = slicing_config_from_option(slice_)
    # the caches pay off over many steps: without --model they run on the teacher
    pipe = _load_generator(model, default="teacher" if cache_config or rehash or rehash_schedule else "student")
    steps = steps or (FEW_STEPS if pipe.consistency_sampling else 50)
    settings = GenerationSettings(steps, guidance, seed, frames, size, negative_prompt, fps)
    from reelkit.accel.step_rehash import config_from_options

    rehash_config = config_from_options(rehash, rehash_schedule, steps, bundled=model in (None, "teacher"))
    if rehash_config is not None and cache_config is not None:
        raise ReelkitError("--rehash and --cache are two caches; choose one")
    if slicing_config is not None:
        from reelkit.accel.slicing import apply_feature_slicing

        apply_feature_slicing(pipe.transformer, slicing_config)
        apply_feature_slicing(pipe.vae, slicing_config)
    if rehash_config is not None:
        from reelkit.accel.step_rehash import apply_step_rehash

        apply_step_rehash(pipe.transformer, rehash_config)
    if cache_config is not None:
        from reelkit.accel.adacache import apply_ada_cache

        apply_ada_cache(pipe.transformer, cache_config)
    if batch:
        rank, world_size = process_shard()
        mine = len(range(rank, len(prompt_list), world_size))
        totals = [0, 0]

        def on_clip(path):
            advance()
            if cache_config is not None:
                totals[0], totals[1] = totals[0] + _cache_steps(pipe)[0], totals[1] + _cache_steps(pipe)[1]

        with progress_bars() as task:
            advance = task(f"process {rank}/{world_size}: clips", mine)
            written = generate_batch(pipe, prompt_list, out_dir, settings, rank, world_size, on_clip=on_clip)
        console.print(f"process {rank}/{world_size}: wrote {len(written)} clip(s) to {out_dir}, "
                      f"skipped {mine - len(written)} already there")
        if cache_config is not None and written:
            console.print(f"adacache: {totals[0]} denoiser calls computed, {totals[1]} reused over "
                          f"{len(written)} clip(s)")
        if rehash_config is not None and written:
            from reelkit.accel.step_rehash import format_stats as rehash_stats_line
            from reelkit.accel.step_rehash import step_rehash_stats

            console.print(rehash_stats_line(step_rehash_stats(pipe.transformer)), highlight=False)
        return
    (prompt,), settings.negative_prompt = pipe.check_inputs(prompt, negative_prompt, frames, size, size, steps,
                                                            guidance, "pt")
    started = time.perf_counter()
    with progress_bars() as task:
        video = generate_video(pipe, prompt, settings, on_step=task("denoising", steps))
    elapsed = time.perf_counter() - started
    write_video(video, output, fps=fps)
    if sheet is not None:
        contact_sheet(video, sheet)
    console.print(f"wrote {output} ({frames} frames, {size}x{size}, {steps} steps, guidance {guidance:g}, "
                  f"seed {seed}) in {elapsed:.1f} s")
    if cache_config is not None:
        from reelkit.accel.adacache import ada_cache_stats, format_stats

        console.print(f"adacache: {format_stats(ada_cache_stats(pipe.transformer))}")
    if rehash_config is not None:
        from reelkit.accel.step_rehash import format_stats as rehash_stats_line
        from reelkit.accel.step_rehash import step_rehash_stats

        console.print(rehash_stats_line(step_rehash_stats(pipe.transformer)), highlight=False)
    if slicing_config is not None:
        from reelkit.accel.slicing import feature_slicing_chunks

        chunks = feature_slicing_chunks(pipe.transformer)
        console.print(f"feature slicing: {chunks[0]} frame chunks, {chunks[1]} spatial chunks", highlight=False)


def _cache_config(cache: str | None, moreg: bool, codebook: Path | None):
    """The AdaCache configuration the generate options ask for, or None for no cache."""
    from reelkit.accel.adacache import AdaCacheConfig, Codebook

    names = {"adacache": "fast", "adacache-fast": "fast", "adacache-slow": "slow"}
    if cache is None and codebook is None:
        if moreg:
            raise ReelkitError("--moreg needs --cache adacache (or --codebook)")
        return None
    if cache is not None and cache not in names:
        raise ReelkitError(f"unknown --cache {cache!r}; choose one of {', '.join(names)}")
    if codebook is None:
        return AdaCacheConfig(codebook=names[cache], moreg=moreg)
    if cache not in (None, "adacache"):
        raise ReelkitError(f"--codebook replaces the {cache} preset; use --cache adacache or leave --cache out")
    book = Codebook.load(codebook)
    centre = json.loads(codebook.read_text()).get("moreg_centre")
    return AdaCacheConfig(codebook=book, moreg=moreg, **({"moreg_centre": centre} if centre else {}))


def _cache_steps(pipe) -> tuple[int, int]:
    """Computed and reused denoiser calls of the last generation, over all cache contexts."""
    from reelkit.accel.adacache import ada_cache_stats

    stats = ada_cache_stats(pipe.transformer).values()
    return sum(sum(s.computed) for s in stats), sum(sum(s.reused) for s in stats)


# --------------------------------------------------------------------------------------------- calibrate

@calibrate_app.command("adacache")
def calibrate_adacache(
    prompts: Annotated[Path, typer.Option("--prompts", help="Calibration prompts, one per line (a few suffice).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Codebook JSON to write.")] = Path("codebook.json"),
    target_psnr: Annotated[float, typer.Option(help="Mean PSNR (dB) the cached videos must keep against the "
                                               "uncached ones.")] = 30.0,
    model: Annotated[str | None, typer.Option(help="'teacher' (default) or a pipeline folder.")] = None,
    steps: Annotated[int, typer.Option(help="Denoising steps the codebook is for.")] = 50,
    guidance: Annotated[float, typer.Option(help="Classifier-free guidance scale.")] = 5.0,
    frames: Annotated[int, typer.Option(help="Frame count, 1+4k.")] = 17,
    size: Annotated[int, typer.Option(help="Height and width, a multiple of 16.")] = 64,
    seed: Annotated[int, typer.Option(help="Noise seed of the first prompt (then seed + line index).")] = 0,
    moreg: Annotated[bool, typer.Option("--moreg", help="Calibrate for AdaCache with motion regularisation "
                                        "(also re-centres it on this model).")] = False,
) -> None:
    """Find the fastest AdaCache codebook that keeps --target-psnr on these prompts; use it with
    'reelkit generate --codebook'."""
    from reelkit.accel.adacache import AdaCacheConfig
    from reelkit.accel.calibrate import calibrate_ada_cache

    def check_target():
        if not 0 < target_psnr < 100:
            raise ReelkitError(f"--target-psnr must be between 0 and 100 dB, got {target_psnr:g}")

    pipe, prompt_list, settings = _calibration_inputs(prompts, output, model, steps, guidance, frames, size, seed,
                                                      min_steps=6, why="for a codebook to have room to reuse",
                                                      check=check_target)
    result = calibrate_ada_cache(pipe, prompt_list, target_psnr, settings, AdaCacheConfig(moreg=moreg),
                                 progress=lambda message: console.print(message))
    result.save(output, target_psnr=target_psnr, steps=steps, guidance=guidance, frames=frames, size=size,
                model=model or "teacher", prompts=prompt_list, moreg=moreg)
    verdict = "meets" if result.met_target else "MISSES (closest candidate kept)"
    console.print(f"wrote {output}: {result.psnr_db:.2f} dB ({verdict} {target_psnr:g} dB), "
                  f"{result.computed_fraction:.0%} of steps computed; "
                  f"use it with: reelkit generate ... --codebook {output}")


@calibrate_app.command("rehash")
def calibrate_rehash(
    prompts: Annotated[Path, typer.Option("--prompts", help="Calibration prompts, one per line (a few suffice).")],
    budget: Annotated[int, typer.Option(help="Full (key) steps to place, 1 to --steps.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Schedule JSON to write.")] = Path("rehash.json"),
    model: Annotated[str | None, typer.Option(help="'teacher' (default) or a pipeline folder.")] = None,
    steps: Annotated[int, typer.Option(help="Denoising steps the schedule is measured on.")] = 50,
    guidance: Annotated[float, typer.Option(help="Classifier-free guidance scale.")] = 5.0,
    frames: Annotated[int, typer.Option(help="Frame count, 1+4k.")] = 17,
    size: Annotated[int, typer.Option(help="Height and width, a multiple of 16.")] = 64,
    seed: Annotated[int, typer.Option(help="Noise seed of the first prompt (then seed + line index).")] = 0,
) -> None:
    """Search Step Rehash key steps on these prompts (the deep features' step-to-step similarity); use the
    schedule with 'reelkit generate --rehash K --rehash-schedule FILE' (any K, any step count)."""
    from reelkit.accel.step_rehash import StepRehashError, calibrate_step_rehash

    def check_budget():
        if not 1 <= budget <= steps:
            raise StepRehashError(f"--budget must be between 1 and the number of steps ({steps}), got {budget}")

    pipe, prompt_list, settings = _calibration_inputs(prompts, output, model, steps, guidance, frames, size, seed,
                                                      min_steps=2, why="for rehash steps to exist",
                                                      check=check_budget)
    say = lambda message: console.print(message, highlight=False)  # noqa: E731
    result = calibrate_step_rehash(pipe, prompt_list, budget, settings, progress=say)
    result.save(output, guidance=guidance, frames=frames, size=size, seed=seed, model=model or "teacher",
                prompts=prompt_list)
    say(f"wrote {output}: key steps {', '.join(map(str, result.key_steps))} ({budget} of {steps}); on these "
        f"prompts {result.psnr_db:.2f} dB vs {result.uniform_psnr_db:.2f} dB with uniform key steps; use it with: "
        f"reelkit generate ... --rehash K --rehash-schedule {output}")


def _calibration_inputs(prompts: Path, output: Path, model: str | None, steps: int, guidance: float, frames: int,
                        size: int, seed: int, min_steps: int, why: str, check: Callable[[], None]):
    """Check a calibrate command's options, cheap checks first (``check`` for the command's own); return the
    pipeline, the prompts and the generation settings."""
    from reelkit.conventions import is_valid_frame_count
    from reelkit.generation import GenerationSettings, read_prompts

    prompt_list = read_prompts(prompts)
    if not is_valid_frame_count(frames):
        raise ReelkitError(f"--frames {frames} is not 1+4k (1, 5, 9, 13, 17, ...)")
    if steps < min_steps:
        raise ReelkitError(f"--steps must be at least {min_steps} {why}, got {steps}")
    check()
    check_number("--guidance", guidance, 1.0, 100.0, "1 turns guidance off")
    check_seed(seed)
    _check_output(output, (".json",), prompts, Path(model) if model else None)
    if not output.parent.is_dir():
        raise ReelkitError(f"{output.parent}: no such folder for the output")
    pipe = _load_generator(model, default="teacher")  # caches pay off over many steps: the teacher
    prompt_list, _ = pipe.check_inputs(prompt_list, None, frames, size, size, steps, guidance, "pt")
    return pipe, prompt_list, GenerationSettings(steps=steps, guidance=guidance, seed=seed, frames=frames, size=size)


# --------------------------------------------------------------------------------------------- eval

@eval_app.command("adherence")
def eval_adherence(
    video: Annotated[Path, typer.Argument(help="A clip (mp4, webm, gif or a PNG folder).")],
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="The prompt the clip should show.")],
    judge: Annotated[Path | None, typer.Option(help="Judge folder (default: the bundled one).")] = None,
) -> None:
    """Read a clip with the demo-world judge and print, per object and attribute, asked vs seen."""
    import torch

    from reelkit.data.captions import parse_prompt
    from reelkit.data.video_io import read_video
    from reelkit.eval.adherence import judge_clips, prompt_adherence
    from reelkit.models.judge import ATTRIBUTES, load_judge

    wanted = parse_prompt(prompt).objects
    clip = read_video(video, size=64)
    with torch.no_grad():
        seen, _ = judge_clips(load_judge(judge), clip[None])
    seen = seen[0]
    table = Table(title=f"{video.name}: {len(seen)} object(s) seen, {len(wanted)} asked")
    table.add_column("attribute")
    for i in range(max(len(wanted), len(seen))):
        table.add_column(f"object {i + 1}: asked / seen")
    for name in ATTRIBUTES:
        cells = []
        for i in range(max(len(wanted), len(seen))):
            asked = getattr(wanted[i], name) if i < len(wanted) else None
            cells.append(f"{asked or '-'} / {seen[i][name] if i < len(seen) else '-'}")
        table.add_row(name, *cells)
    console.print(table)
    scores = prompt_adherence(prompt, seen)
    console.print("agreement: " + ", ".join(f"{k} {v:.2f}" for k, v in scores.items() if v == v))


@eval_app.command("ceiling")
def eval_ceiling(
    model: Annotated[str, typer.Argument(help="An image VAE or CVVAE folder, or a bundled name (image_vae_f4).")],
    clips: Annotated[int, typer.Option(help="Held-out demo clips to round-trip (1 to 512).")] = 96,
    frames: Annotated[int, typer.Option(help="Frames per clip, 1+4k.")] = 17,
    size: Annotated[int, typer.Option(help="Clip size in pixels (multiple of 8).")] = 64,
    judge: Annotated[Path | None, typer.Option(help="Judge folder (default: the bundled one).")] = None,
) -> None:
    """The judge's reading of held-out clips after a round trip through a VAE: what a generator decoding
    through it can reach at most."""
    from reelkit.conventions import round_down_frames
    from reelkit.data.datasets import HELDOUT_SIZE, heldout_seeds
    from reelkit.data.world import render_clip
    from reelkit.eval.ceiling import ceiling_figures, roundtrip_reading
    from reelkit.models.judge import load_judge
    from reelkit.vae.ops import load_any_vae, roundtrip_fn

    if not 1 <= clips <= HELDOUT_SIZE:
        raise ReelkitError(f"--clips must lie in 1..{HELDOUT_SIZE}, got {clips}")
    frames = round_down_frames(frames)
    vae = load_any_vae(model)
    videos = [render_clip(seed, frames, size) for seed in heldout_seeds(clips)]
    with progress_bars() as task:
        reading = roundtrip_reading(load_judge(judge), roundtrip_fn(vae), videos,
                                    advance=task(f"round trips through {type(vae).__name__}", clips))
    figures = ceiling_figures(reading, videos)
    console.print(f"{model}: {clips} held-out clips of {frames}x{size}px; judge "
                  + ", ".join(f"{k[6:]} {v:.3f}" for k, v in figures.items() if k.startswith("judge_"))
                  + f"; PSNR {figures['psnr_db']:.2f} dB, SSIM {figures['ssim']:.3f}")


# -------------------------------------------------------------------------------------------- bench

@app.command()
def bench(
    suite: Annotated[str, typer.Argument(help="Suite to run: world, vae, generate, cache, rehash, memory, "
                                              "distill.")],
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the report here.")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="A smaller run (under 3 minutes on 2 CPU cores).")] = False,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    repeats: Annotated[int | None, typer.Option(help="Timed repeats per row (median reported).")] = None,
) -> None:
    """Measure a suite side by side in one process and print (and optionally save) the figures."""
    from reelkit.eval.bench import load_suite, run_suite, write_report

    load_suite(suite)  # unknown suite: fail before any work
    if json_path is not None:
        _check_output(json_path, (".json",))
    if repeats is not None and repeats < 1:
        raise ReelkitError("--repeats must be at least 1")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ReelkitError(f"unknown device '{device}'; use cpu or cuda")
    with progress_bars() as task:
        report = run_suite(suite, quick=quick, device=device, repeats=repeats, progress=task, report_path=json_path)
    _print_rows(report)
    if json_path is not None:
        write_report(report, json_path)
        console.print(f"wrote {json_path}")


def _print_rows(report: dict) -> None:
    rows = report["rows"]
    keys = list(dict.fromkeys(k for row in rows for k in row))
    table = Table(title=f"bench {report['suite']} ({report['machine']['device']})")
    for key in keys:
        table.add_column(key, justify="left" if key == "method" else "right")
    for row in rows:
        table.add_row(*(_format(row.get(k)) for k in keys))
    Console(width=max(console.width, 160)).print(table)  # figures stay readable when piped to a log


def _format(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


# -------------------------------------------------------------------------- interpolate, animate, extend

import reelkit.cli_mardini  # noqa: E402, F401  (registers MarDini's commands on `app`)

# --------------------------------------------------------------------------------------------- main

class _NoticeHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        err_console.print(f"notice: {record.getMessage()}", highlight=False, markup=False)


def _one_line(message: str) -> str:
    return " ".join(str(message).split())


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI, turning user errors into one line on stderr and exit code 2."""
    logger = logging.getLogger("reelkit")
    if not any(isinstance(h, _NoticeHandler) for h in logger.handlers):
        logger.addHandler(_NoticeHandler())
        logger.setLevel(logging.WARNING)
        logger.propagate = False
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv  # show the traceback of an unexpected failure
    argv = [a for a in argv if a != "--debug"]
    command = typer.main.get_command(app)
    try:
        result = command.main(args=argv, prog_name="reelkit", standalone_mode=False)
    except click_errors.NoArgsIsHelpError:  # `reelkit world` alone: typer has printed its help
        return 0
    except click_errors.UsageError as error:
        hint = f" (see '{error.ctx.command_path} --help')" if error.ctx is not None else ""
        err_console.print(f"error: {_one_line(error.format_message())}{hint}", markup=False, highlight=False)
        return 2
    except ReelkitError as error:
        err_console.print(f"error: {_one_line(str(error))}", markup=False, highlight=False)
        return 2
    except typer.Abort:
        err_console.print("aborted", markup=False)
        return 130
    except typer.Exit as done:
        return done.exit_code
    except KeyboardInterrupt:
        err_console.print("error: interrupted", markup=False, highlight=False)
        return 130
    except MemoryError:
        err_console.print("error: out of memory; try a smaller --size, fewer frames, --slice or --chunk-frames",
                          markup=False, highlight=False)
        return 2
    except OSError as error:  # the machine's side: a full disk, a permission, a vanished file
        if debug:
            raise
        err_console.print(f"error: {_one_line(str(error)) or type(error).__name__}", markup=False, highlight=False)
        return 2
    except Exception as error:  # a bug in reelkit: say so, in one line, with the way to the traceback
        if debug:
            raise
        err_console.print(f"error: internal error ({type(error).__name__}: {_one_line(str(error))[:300]}); please "
                          "report it with the command line; --debug shows the traceback", markup=False,
                          highlight=False)
        return 1
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
