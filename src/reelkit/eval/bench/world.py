"""Bench suite ``world``: how fast the demo world renders, and what an mp4 round trip costs.

Rows:
* ``render``: clips of the held-out seeds at several sizes; ``frames_per_s``, ``latency_s`` per clip,
  ``peak_mem_bytes``.
* ``write_mp4`` / ``read_mp4``: H.264 encode and decode of a rendered clip; ``psnr_db`` and ``ssim`` of
  the decoded clip against the rendered one (the loss every mp4 in the pipeline pays).
* ``read_real_clip``: decode, resample to 8 fps and centre-crop a real 720p clip from ``shared/data``
  (skipped when the folder is absent).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from reelkit.data.datasets import heldout_seeds
from reelkit.data.video_io import probe_video, read_video, write_video
from reelkit.data.world import render_clip
from reelkit.eval.bench import BenchContext
from reelkit.metrics import video_psnr, video_ssim
from reelkit.paths import shared_data_clips


def run(ctx: BenchContext) -> list[dict]:
    sizes = [(64, 17), (128, 17)] if ctx.quick else [(64, 17), (128, 33), (256, 33)]
    seeds = heldout_seeds(4 if ctx.quick else 8)
    ctx.settings.update({"render_sizes": [f"{s}x{s}x{t}" for s, t in sizes], "seeds": len(seeds)})
    rows = []
    for size, frames in sizes:
        advance = ctx.progress(f"render {size}px x {frames}", ctx.repeats)

        def render_all(size=size, frames=frames):
            for seed in seeds:
                render_clip(seed, frames, size)

        timing = ctx.time(render_all, on_repeat=advance)
        per_clip = timing.median_s / len(seeds)
        rows.append({"method": "render", "size": size, "frames": frames, "latency_s": per_clip,
                     "frames_per_s": frames / per_clip,
                     "peak_mem_bytes": ctx.peak_memory(lambda size=size, frames=frames: render_clip(
                         seeds[0], frames, size))})

    size, frames = sizes[-1]
    clip = render_clip(seeds[0], frames, size).video
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "clip.mp4"
        advance = ctx.progress("mp4 write + read", 2 * ctx.repeats)
        write = ctx.time(lambda: write_video(clip, path, fps=8), on_repeat=advance)
        read = ctx.time(lambda: read_video(path), on_repeat=advance)
        decoded = read_video(path)
        common = {"size": size, "frames": frames}
        rows.append({"method": "write_mp4", **common, "latency_s": write.median_s,
                     "frames_per_s": frames / write.median_s, "file_bytes": path.stat().st_size})
        rows.append({"method": "read_mp4", **common, "latency_s": read.median_s,
                     "frames_per_s": frames / read.median_s, "psnr_db": video_psnr(decoded, clip),
                     "ssim": video_ssim(decoded, clip)})

    real = shared_data_clips()
    if real:
        frames = 33
        advance = ctx.progress("read real 720p clip", ctx.repeats)
        timing = ctx.time(lambda: read_video(real[0], num_frames=frames, fps=8, size=128), on_repeat=advance)
        ctx.settings["real_clip"] = real[0].name
        source = probe_video(real[0])
        rows.append({"method": "read_real_clip", "size": 128, "frames": frames, "fps": 8,
                     "source": f"{source.width}x{source.height}@{source.fps:g}fps",
                     "latency_s": timing.median_s, "frames_per_s": frames / timing.median_s})
    return rows
