"""Bench suite ``vae``: CV-VAE reconstruction against the image VAE and uniform frame sampling.

Data sets (``data`` column): ``real``, the real clips of ``shared/data`` (centre crop, 10 fps, i.e. the
paper's stride 3 at 30 fps), and ``world``, the held-out demo-world split. Rows (``method``):

* ``image_vae``: every frame through the image VAE (1x temporal compression);
* ``cvvae``: the CV-VAE (4x);
* ``uniform_sampling``: the image VAE on frames 0, 4, 8, ..., frames in between linearly blended;
* ``cvvae_chunked``: the CV-VAE encoding/decoding 1+16 frames at a time; ``vs_unchunked_psnr_db``
  compares it with the unchunked output;
* ``compat``: the image VAE's decoder on CV-VAE latent frames, against psi(X) (frames 0, 4, 8, ...).

Figures: ``psnr_db``, ``ssim`` (mean over clips), ``latency_s`` (encode + decode of one clip, median),
``peak_mem_bytes`` (weights + activations), ``latent_frames``. A last pair of rows (``data: long``) decodes a long clip
(129 frames at 256 px; 65 at 128 px with ``--quick``) with and without chunking: ``peak_mem_bytes``,
``latency_s`` (one run), ``memory_reduction`` and ``vs_unchunked_psnr_db``.
"""

from __future__ import annotations

import torch

from reelkit.data.datasets import heldout_seeds
from reelkit.data.video_io import read_video
from reelkit.data.world import render_clip
from reelkit.eval.bench import BenchContext
from reelkit.eval.bench.harness import measure_latency
from reelkit.eval.metrics import video_psnr, video_ssim
from reelkit.paths import shared_data_clips
from reelkit.vae import (
    compat_decode,
    image_vae_reconstruct,
    load_cvvae,
    load_image_vae,
    reconstruct,
    uniform_sampling_reconstruct,
)
from reelkit.vae.chunking import ChunkingConfig
from reelkit.vae.losses import psi

REAL_FPS = 10.0  # 30 fps footage at stride 3, as the paper evaluates WebVid
SIZE, FRAMES = 128, 33
LONG_CLIP = {True: (65, 128), False: (129, 256)}  # quick -> (frames, size) of the long-decode rows


def _datasets(ctx: BenchContext, size: int, frames: int) -> dict[str, list[torch.Tensor]]:
    data = {}
    real = shared_data_clips()
    if real:
        starts = (0.0,) if ctx.quick else (0.0, 4.0)
        data["real"] = [read_video(path, num_frames=frames, fps=REAL_FPS, size=size, start_s=start)
                        for path in real for start in starts]
        ctx.settings["real_clips"] = [f"{p.name}@{s:g}s" for p in real for s in starts]
    seeds = heldout_seeds(2 if ctx.quick else 12)
    data["world"] = [render_clip(seed, frames, size).video for seed in seeds]
    ctx.settings["world_clips"] = len(seeds)
    return data


def run(ctx: BenchContext) -> list[dict]:
    torch.manual_seed(0)
    size, frames = SIZE, FRAMES
    ctx.settings.update({"size": size, "frames": frames, "real_fps": REAL_FPS, "compat_target": "psi=slice"})
    vae = load_cvvae().to(ctx.device)
    image_vae = load_image_vae().to(ctx.device)
    chunked = load_cvvae().to(ctx.device)
    chunked.enable_chunking(frames_per_chunk=16)
    ctx.settings["chunking"] = vars(chunked.chunking)
    latent_frames = 1 + (frames - 1) // 4

    same = lambda v: v  # noqa: E731 - the reference of a reconstruction is its input
    methods = {  # name: (run, reference, latent frames, weights held)
        "image_vae": (lambda v: image_vae_reconstruct(image_vae, v), same, frames, (image_vae,)),
        "cvvae": (lambda v: reconstruct(vae, v), same, latent_frames, (vae,)),
        "uniform_sampling": (lambda v: uniform_sampling_reconstruct(image_vae, v), same, latent_frames,
                             (image_vae,)),
        "cvvae_chunked": (lambda v: reconstruct(chunked, v), same, latent_frames, (chunked,)),
        "compat": (lambda v: compat_decode(image_vae, vae, v), lambda v: psi(v[None], "slice")[0], latent_frames,
                   (vae, image_vae)),
    }
    rows = []
    for name, clips in _datasets(ctx, size, frames).items():
        unchunked = {}
        advance = ctx.progress(f"{name}: {len(methods)} methods x {len(clips)} clips", len(methods) * len(clips))
        for method, (fn, target_of, latents, weights) in methods.items():
            psnrs, ssims, vs_unchunked = [], [], []
            for i, clip in enumerate(clips):
                clip = clip.to(ctx.device)
                output = fn(clip).cpu()
                target = target_of(clip).cpu()
                psnrs.append(video_psnr(output, target))
                ssims.append(video_ssim(output, target))
                if method == "cvvae":
                    unchunked[i] = output
                if method == "cvvae_chunked":
                    vs_unchunked.append(video_psnr(output, unchunked[i]))
                advance()
            clip = clips[0].to(ctx.device)
            row = {"method": method, "data": name, "clips": len(clips), "size": size, "frames": frames,
                   "latent_frames": latents, "psnr_db": sum(psnrs) / len(psnrs), "ssim": sum(ssims) / len(ssims),
                   "latency_s": ctx.time(lambda fn=fn, clip=clip: fn(clip)).median_s,
                   "peak_mem_bytes": ctx.peak_memory(lambda fn=fn, clip=clip: fn(clip), *weights)}
            if vs_unchunked:
                row["vs_unchunked_psnr_db"] = sum(vs_unchunked) / len(vs_unchunked)
            rows.append(row)
    rows += _long_decode(ctx, vae)
    return rows


def _long_decode(ctx: BenchContext, vae) -> list[dict]:
    """Decode a long clip's latents whole and in chunks of 1+4 latents: peak memory and agreement."""
    frames, size = LONG_CLIP[ctx.quick]
    real = shared_data_clips()
    clip = (read_video(real[0], num_frames=frames, size=size) if real
            else render_clip(heldout_seeds(1)[0], frames, size).video)
    with torch.no_grad():
        z = vae.encode(clip[None].to(ctx.device)).latent_dist.mode()
    ctx.settings["long_clip"] = f"{frames}x{size}px ({'real' if real else 'world'})"
    rows, whole = [], None
    advance = ctx.progress(f"long decode {frames}x{size}px", 2)
    for method, chunking in (("cvvae", None), ("cvvae_chunked", ChunkingConfig(16))):
        vae.chunking = chunking
        with torch.no_grad():
            # one timed run: the model is warm from the rows above, and a long decode dwarfs timer noise
            decoded = []
            timing = measure_latency(lambda out=decoded: out.append(vae.decode(z).sample), warmup=0, repeats=1,
                                     device=ctx.device)
            video = decoded.pop().clamp(-1, 1).cpu()
            peak = ctx.peak_memory(lambda: vae.decode(z), vae)
        row = {"method": method, "data": "long", "size": size, "frames": frames, "latent_frames": z.shape[2],
               "latency_s": timing.median_s, "peak_mem_bytes": peak,
               "psnr_db": video_psnr(video[0], clip)}
        if whole is None:
            whole = video
        else:
            row["vs_unchunked_psnr_db"] = video_psnr(video, whole)
            row["memory_reduction"] = rows[0]["peak_mem_bytes"] / peak
        rows.append(row)
        advance()
    vae.chunking = None
    return rows
