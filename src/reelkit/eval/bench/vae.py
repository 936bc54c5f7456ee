"""Bench suite ``vae``: CV-VAE reconstruction against the image VAE and uniform frame sampling.

Data sets (``data`` column): ``real``, the real clips of ``shared/data`` (centre crop, 10 fps, i.e. the
paper's stride 3 at 30 fps), ``world``, the held-out demo-world split, and ``camera``, camera moves (pan,
zoom, rotate) over natural photos with held-out seeds: content that moves. Rows (``method``):

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

*The ceiling* (``data: judge``): ``JUDGE_CLIPS`` held-out clips at the teacher's size (17 frames, 64 px)
read by the judge: ``clips`` (the clips themselves), ``image_vae`` and ``cvvae`` (their round trips):
``judge_shape`` / ``_color`` / ``_motion`` / ``_count`` (accuracy against the true labels), PSNR, SSIM.
No generator in a VAE's latent space can be read better than its round trip.

Every row names its VAE pair in ``vae``. The judge rows cover each bundled pair of :data:`FAMILIES` (the
blob-era ``8x`` pair and the rebuilt ``4x`` one while the family is being rebuilt); the other rows, the
newest pair.
"""

from __future__ import annotations

import copy

import torch

from reelkit.data.camera import camera_clip
from reelkit.data.datasets import heldout_seeds
from reelkit.data.video_io import read_video
from reelkit.data.world import render_clip
from reelkit.eval.bench import BenchContext
from reelkit.eval.bench.harness import measure_latency
from reelkit.eval.ceiling import ceiling_figures, roundtrip_reading
from reelkit.metrics import video_psnr, video_ssim
from reelkit.paths import ASSETS_DIR, shared_data_clips
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
JUDGE_CLIPS = {True: 16, False: 96}
JUDGE_FRAMES, JUDGE_SIZE = 17, 64  # the teacher's clips
FAMILIES = {"8x": ("image_vae", "cvvae"), "4x": ("image_vae_f4", "cvvae_f4")}
"""Label -> (image VAE, CV-VAE) asset folders: the pairs measured when bundled."""
JUDGE = None  # a loader returning the judge (tests swap in a tiny one); None: the bundled judge


def load_families() -> dict[str, tuple]:
    """Label -> (image VAE, CV-VAE) for each bundled pair of :data:`FAMILIES`."""
    return {label: (load_image_vae(ASSETS_DIR / image), load_cvvae(ASSETS_DIR / video))
            for label, (image, video) in FAMILIES.items()
            if (ASSETS_DIR / image).is_dir() and (ASSETS_DIR / video).is_dir()}


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
    data["camera"] = [camera_clip(seed, frames, size) for seed in seeds[:len(seeds) // 2]]
    ctx.settings["camera_clips"] = len(data["camera"])
    return data


def run(ctx: BenchContext) -> list[dict]:
    from reelkit.models.judge import load_judge

    torch.manual_seed(0)
    ctx.settings.update({"size": SIZE, "frames": FRAMES, "real_fps": REAL_FPS, "compat_target": "psi=slice"})
    families = load_families()
    ctx.settings["vae_families"] = {label: FAMILIES.get(label) for label in families}
    judge = (JUDGE() if JUDGE is not None else load_judge()).to(ctx.device)
    rows = _judge_rows(ctx, judge, families)
    # the reconstruction, latency and memory rows for the newest pair (the one models are being rebuilt on)
    label, (image_vae, vae) = list(families.items())[-1]
    ctx.settings["reconstruction_rows_for"] = label
    rows += [{"vae": label, **row} for row in _family_rows(ctx, image_vae, vae, _datasets(ctx, SIZE, FRAMES))]
    return rows


def _judge_rows(ctx: BenchContext, judge, families: dict[str, tuple]) -> list[dict]:
    """The ceiling: the judge on the clips and on each VAE's round trip of them (teacher's size)."""
    seeds = heldout_seeds(JUDGE_CLIPS[ctx.quick])
    clips = [render_clip(seed, JUDGE_FRAMES, JUDGE_SIZE) for seed in seeds]
    ctx.settings.update({"judge_clips": len(clips), "judge_clip_size": f"{JUDGE_FRAMES}x{JUDGE_SIZE}px"})
    common = {"data": "judge", "clips": len(clips), "size": JUDGE_SIZE, "frames": JUDGE_FRAMES}
    one_clip = clips[0].video[None]  # (1, C, T, H, W): the latency of one round trip
    own = ceiling_figures(roundtrip_reading(judge, lambda v: v, clips), clips)
    rows = [{"vae": None, "method": "clips", **common,
             **{k: v for k, v in own.items() if k.startswith("judge_")}}]
    for label, (image_vae, vae) in families.items():
        image_vae.to(ctx.device)
        vae.to(ctx.device)
        roundtrips = {"image_vae": lambda v, m=image_vae: image_vae_reconstruct(m, v.to(ctx.device)),
                      "cvvae": lambda v, m=vae: reconstruct(m, v.to(ctx.device))}
        for method, roundtrip in roundtrips.items():
            advance = ctx.progress(f"judge on {label} {method} round trips", len(clips))
            reading = roundtrip_reading(judge, roundtrip, clips, advance=advance)
            rows.append({"vae": label, "method": method, **common, **ceiling_figures(reading, clips),
                         "latency_s": ctx.time(lambda f=roundtrip: f(one_clip)).median_s})
    return rows


def _family_rows(ctx: BenchContext, image_vae, vae, datasets: dict[str, list[torch.Tensor]]) -> list[dict]:
    size, frames = SIZE, FRAMES
    vae = vae.to(ctx.device)
    image_vae = image_vae.to(ctx.device)
    chunked = copy.deepcopy(vae)
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
    for name, clips in datasets.items():
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
