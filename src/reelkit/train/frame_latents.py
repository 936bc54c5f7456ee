"""Training clips for MarDini encoded once into per-frame latents at two resolutions.

Each clip (a demo-world clip, or with probability ``photo_fraction`` a camera move over a natural photo,
:mod:`reelkit.data.camera`) is encoded frame by frame by the image VAE at ``size`` (the generator's
latents, ``high``) and at ``size / planner_scale`` (the planner's, ``low``); posterior means, scaled,
fp16. Shards are written atomically and skipped when present, so a build resumes and a larger
``num_clips`` extends a cache.

>>> import tempfile
>>> from reelkit.vae.image_vae import build_image_vae
>>> vae = build_image_vae(block_out_channels=(8, 8, 8, 8), norm_num_groups=4)
>>> folder = build_frame_latent_cache(tempfile.mkdtemp(), num_clips=3, num_frames=5, size=32, vae=vae)
>>> cache = FrameLatentCache(folder)
>>> len(cache), cache[0]["high"].shape, cache[0]["low"].shape     # (C, T, h, w) each
(3, torch.Size([8, 5, 4, 4]), torch.Size([8, 5, 2, 2]))
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch.utils.data import Dataset

from reelkit.data.datasets import HELDOUT_SEED_BASE
from reelkit.errors import ReelkitError
from reelkit.files import atomic_path
from reelkit.train.latent_cache import MANIFEST, open_cache_folder, shard_name


def _clip(index: int, num_frames: int, size: int, photo_fraction: float) -> torch.Tensor:
    from reelkit.data.camera import camera_clip
    from reelkit.data.world import render_clip

    if np.random.default_rng([index, 0xF4A]).random() < photo_fraction:
        return camera_clip(index, num_frames, size)
    return render_clip(index, num_frames, size).video


@torch.no_grad()
def build_frame_latent_cache(folder: str | Path, num_clips: int, num_frames: int = 17, size: int = 64,
                             planner_scale: int = 2, photo_fraction: float = 0.3, shard_size: int = 512,
                             batch_size: int = 16, vae=None, progress: Callable[[int], None] | None = None) -> Path:
    """Encode clips ``0 .. num_clips`` into ``folder`` (``vae`` defaults to the bundled image VAE)."""
    from reelkit.mardini.latents import downsample, encode_frames
    from reelkit.vae.image_vae import load_image_vae

    if not 0 < num_clips < HELDOUT_SEED_BASE:
        raise ReelkitError("the frame-latent cache holds 1 or more training clips, all below the held-out seeds")
    settings = {"num_frames": num_frames, "size": size, "planner_scale": planner_scale,
                "photo_fraction": photo_fraction, "shard_size": shard_size}
    folder = open_cache_folder(folder, num_clips, settings, "a frame-latent cache")
    vae = (vae or load_image_vae()).eval()
    done = 0
    for shard in range((num_clips + shard_size - 1) // shard_size):
        indices = range(shard * shard_size, min(num_clips, (shard + 1) * shard_size))
        path = folder / shard_name(shard)
        if path.is_file():
            done += len(indices)
            continue
        high, low = [], []
        for start in range(indices.start, indices.stop, batch_size):
            video = torch.stack([_clip(i, num_frames, size, photo_fraction)
                                 for i in range(start, min(start + batch_size, indices.stop))])
            high.append(encode_frames(vae, video).half())
            low.append(encode_frames(vae, downsample(video, planner_scale)).half())
            done += len(video)
            if progress is not None:
                progress(done)
        with atomic_path(path) as tmp:
            save_file({"high": torch.cat(high).contiguous(), "low": torch.cat(low).contiguous()}, str(tmp))
    return folder


class FrameLatentCache(Dataset):
    """The clips of a frame-latent cache: ``high`` and ``low`` latents ``(C, T, h, w)``, fp32."""

    def __init__(self, folder: str | Path):
        folder = Path(folder)
        if not (folder / MANIFEST).is_file():
            raise ReelkitError(f"{folder}: not a frame-latent cache (no {MANIFEST}); build it with "
                               "reelkit train mardini")
        shards = sorted(folder.glob("shard_*.safetensors"))
        if not shards:
            raise ReelkitError(f"{folder}: the frame-latent cache has no shards yet")
        try:
            parts = [load_file(str(path)) for path in shards]
        except (SafetensorError, OSError) as error:
            raise ReelkitError(f"{folder}: corrupt frame-latent cache shard ({error})") from None
        self.high = torch.cat([p["high"] for p in parts])
        self.low = torch.cat([p["low"] for p in parts])

    def __len__(self) -> int:
        return len(self.high)

    def __getitem__(self, index: int) -> dict:
        return {"high": self.high[index].float(), "low": self.low[index].float()}


__all__ = ["FrameLatentCache", "build_frame_latent_cache"]
