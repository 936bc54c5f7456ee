"""The studio's MarDini and CV-VAE tabs: interpolate two uploaded images, animate one, extend an uploaded video;
reconstruct an uploaded video with the CV-VAE (PSNR / SSIM and input | output side by side).

Uploads are read with limits (``MAX_SIDE`` pixels after resizing, ``MAX_FRAMES`` frames), so a large file costs
no more than a small one; every mistake is a :class:`ReelkitError` the page shows as a message.
"""

from __future__ import annotations

import threading
from pathlib import Path

import torch

from reelkit.errors import ReelkitError, ShapeError

SIZES = (32, 48, 64, 96, 128)
MAX_FRAMES = 33  # frames read from an uploaded video (1 + 4k)


class Models:
    """MarDini and the CV-VAE, loaded on first use."""

    def __init__(self, lock: threading.Lock):
        self.lock = lock
        self._mardini = self._vae = None

    def mardini(self):
        from reelkit.pipelines.masked_video import load_masked_video

        if self._mardini is None:
            self._mardini = load_masked_video()
            self._mardini.set_progress_bar_config(disable=True)
        return self._mardini

    def vae(self, name: str):
        from reelkit.vae import load_cvvae

        if self._vae is None or getattr(self._vae, "bundled_name", None) != name:
            self._vae = load_cvvae(name)
        return self._vae


def _need(path: str | None, what: str) -> Path:
    if not path:
        raise ReelkitError(f"upload {what} first")
    return Path(path)


def read_image(path: str | None, size: int, what: str) -> torch.Tensor:
    """``(3, size, size)`` in ``[-1, 1]`` from an uploaded image."""
    from reelkit.data.video_io import read_video

    return read_video(_need(path, what), num_frames=1, size=size)[:, 0]


def read_clip(path: str | None, size: int, what: str = "a video") -> torch.Tensor:
    """``(3, T, size, size)``, ``T`` at most :data:`MAX_FRAMES` (1 + 4k), from an uploaded video."""
    from reelkit.data.video_io import count_frames, read_video

    path = _need(path, what)
    frames, _ = count_frames(path)
    return read_video(path, num_frames=MAX_FRAMES if frames > MAX_FRAMES else None, size=size)


def mardini_task(models: Models, task: str, first, last, video, frames: int, steps: int, seed: int, size: int,
                 add: int) -> tuple[torch.Tensor, str]:
    """Run one MarDini task on the uploads; returns the clip and a one-line description."""
    from reelkit.conventions import is_valid_frame_count

    frames, steps, seed, size, add = int(frames), int(steps), int(seed), int(size), int(add)
    if size not in SIZES:
        raise ShapeError(f"size must be one of {', '.join(map(str, SIZES))}, got {size}")
    if not is_valid_frame_count(frames):
        raise ShapeError(f"{frames} frames is not 1+4k (5, 9, 13, 17, ...)")
    if not 1 <= steps <= 100:
        raise ReelkitError(f"steps must lie in 1 .. 100, got {steps}")
    generator = torch.Generator().manual_seed(seed)
    with models.lock:
        pipe = models.mardini()
        if task == "interpolate":
            a, b = read_image(first, size, "the first frame"), read_image(last, size, "the last frame")
            out = pipe.interpolate(a, b, frames, num_inference_steps=steps, generator=generator).frames[0]
            return out, f"interpolation: {frames} frames between the two images"
        if task == "animate":
            still = read_image(first, size, "an image")
            out = pipe.animate(still, frames, num_inference_steps=steps, generator=generator).frames[0]
            return out, f"image-to-video: {frames} frames from the image"
        if task == "extend":
            clip = read_clip(video, size)
            if not 1 <= add <= 64:
                raise ReelkitError(f"add 1 to 64 frames, got {add}")
            out = pipe.extend(clip, add, num_inference_steps=steps, generator=generator).frames[0]
            return out, f"expansion: {clip.shape[1]} frames + {add}"
    raise ReelkitError(f"unknown task {task!r}")


def reconstruct_task(models: Models, video, size: int, vae_name: str) -> tuple[torch.Tensor, str]:
    """The CV-VAE round trip of an uploaded video: ``input | output`` side by side, and its PSNR / SSIM."""
    from reelkit.metrics import video_psnr, video_ssim
    from reelkit.vae import reconstruct

    size = int(size)
    if size not in SIZES:
        raise ShapeError(f"size must be one of {', '.join(map(str, SIZES))}, got {size}")
    clip = read_clip(video, size)
    with models.lock:
        output = reconstruct(models.vae(vae_name), clip)
    psnr, ssim = video_psnr(output, clip), video_ssim(output, clip)
    return torch.cat([clip, output], dim=-1), (f"**PSNR {psnr:.2f} dB, SSIM {ssim:.4f}** ({clip.shape[1]} frames -> "
                                               f"{1 + (clip.shape[1] - 1) // 4} latent frames; input | output)")


__all__ = ["MAX_FRAMES", "Models", "mardini_task", "reconstruct_task"]
