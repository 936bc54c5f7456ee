"""``reelkit vae``: reconstruct clips, encode to and decode from latents."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from reelkit.cli.app import app
from reelkit.cli.common import IMAGE_SUFFIXES, check_output, console, progress_bars

vae_app = typer.Typer(help="CV-VAE: reconstruct clips, encode to and decode from latents.", no_args_is_help=True)
app.add_typer(vae_app, name="vae")



ModelOption = Annotated[Path | None, typer.Option("--model", help="CVVAE folder or bundled name, e.g. cvvae_f4 "
                                                  "(default: the bundled cvvae).")]
FramesOption = Annotated[int, typer.Option(help="Frames to read, 1+4k (others round down).")]
SizeOption = Annotated[int, typer.Option(help="Resize and centre-crop to SIZE x SIZE (multiple of 8).")]
FpsOption = Annotated[float | None, typer.Option(help="Resample to this frame rate (default: the file's).")]
ChunkOption = Annotated[int | None, typer.Option(
    "--chunk-frames", help="Bound memory: encode/decode 1+N frames at a time (N a multiple of 4).")]
TileOption = Annotated[int | None, typer.Option("--tile", help="Bound memory: spatial tiles of this many pixels.")]




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
    from reelkit.metrics import video_psnr, video_ssim
    from reelkit.vae import reconstruct

    check_output(output, WRITERS, path, model)
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

    check_output(output, (".safetensors",), path, model)
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

    check_output(output, WRITERS, path, model)
    vae = _load_vae(model, chunk_frames, tile)
    z, fps = load_latents(path, vae)
    with console.status("decoding"), torch.no_grad():
        video = vae.decode(z[None], image_mode=image_mode).sample[0].clamp(-1, 1)
    write_video(video, output, fps=fps if not image_mode else fps / 4)
    console.print(f"wrote {output} ({video.shape[1]} frames, {video.shape[2]}x{video.shape[3]})")
