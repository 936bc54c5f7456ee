"""Representation alignment (REPA, Yu et al. 2024) for the text-to-video teacher.

A DiT learns what its data's objects look like slowly, from the denoising loss alone; REPA speeds that up by
asking an early block's hidden states, projected by a small MLP, to match a pre-trained visual encoder's
features of the *clean* clip at the same place (negative cosine similarity per token). Here the encoder is the
frame tower of the demo image-text reward (``reelkit train rewards``: contrastive on world captions, its own
seed, no weights shared with the judge that grades the teacher), read at each latent frame's last video frame.

The targets depend only on the clip, so they are computed once per cache shard and stored beside it
(``repa_*.safetensors``, like the objects' coverage): ``(N, 1+k, C, h, w)`` fp16 at the encoder's grid, pooled
to the DiT's token grid when used.

>>> import torch
>>> align = RepresentationAlignment(dim=32, target_dim=16)
>>> hidden = torch.randn(2, 5 * 4 * 4, 32)                  # (B, T*S, D): a block's output, 4x4 tokens a frame
>>> targets = torch.randn(2, 5, 16, 8, 8)                   # (B, 1+k, C, 8, 8): encoder features
>>> loss = align(hidden, targets, grid=(5, 4, 4))
>>> bool(0.0 <= loss <= 2.0)                               # one minus a mean cosine
True
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from reelkit.conventions import TEMPORAL_FACTOR
from reelkit.errors import ReelkitError
from reelkit.files import atomic_path
from reelkit.train.latent_cache import missing_sidecars

DEFAULT_ENCODER = "demo-image"


def latent_frame_indices(num_frames: int) -> list[int]:
    """The video frame each latent frame is read at: the first frame, then each temporal group's last frame."""
    return [0] + list(range(TEMPORAL_FACTOR, num_frames, TEMPORAL_FACTOR))


def encoder_features(encoder, video: torch.Tensor) -> torch.Tensor:
    """``(B, 3, T, H, W)`` clips in [-1, 1] to the frame tower's features ``(B, 1+k, C, h, w)`` at the latent frames."""
    from reelkit.rewards.base import resize_center_crop

    frames = video[:, :, latent_frame_indices(video.shape[2])]  # (B, 3, 1+k, H, W)
    B, T = frames.shape[0], frames.shape[2]
    images = resize_center_crop(frames.transpose(1, 2).flatten(0, 1), encoder.config.size)  # (B*(1+k), 3, s, s)
    features = encoder.frame_encoder(images.to(encoder.dtype))  # (B*(1+k), C, h, w)
    return features.view(B, T, *features.shape[1:])


@torch.no_grad()
def add_representation_targets(folder: str | Path, encoder: str = DEFAULT_ENCODER, batch_size: int = 32) -> None:
    """Write each shard's REPA targets beside it (``repa_*.safetensors``) where they are missing: the shard's clips
    are re-rendered from their seeds (about 60 ms a clip on one core) and read by ``encoder``'s frame tower."""
    from reelkit.data.world import render_clip
    from reelkit.rewards.base import load_reward

    folder = Path(folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    if manifest.get("shape_twins"):
        raise ReelkitError(f"{folder}: REPA targets are for plain latent caches, not shape twins")
    model = load_reward(encoder)
    if not hasattr(model, "frame_encoder"):
        raise ReelkitError(f"{encoder}: REPA needs a demo reward with a frame tower (demo-image or demo-video)")
    for target, seeds, _ in missing_sidecars(folder, "repa"):
        parts = []
        for start in range(0, len(seeds), batch_size):
            video = torch.stack([render_clip(seed, manifest["num_frames"], manifest["size"]).video
                                 for seed in seeds[start:start + batch_size]])
            parts.append(encoder_features(model, video).half())
        with atomic_path(target) as tmp:
            save_file({"features": torch.cat(parts).contiguous()}, str(tmp), metadata={"encoder": str(encoder)})


class RepresentationAlignment(nn.Module):
    """REPA's projector and loss: an MLP maps a block's hidden states ``(B, T*S, D)`` to the encoder's width; the
    loss is one minus their mean cosine similarity with the targets pooled to the token grid. Trained with the
    denoiser and never exported (only the transformer and text encoder are)."""

    def __init__(self, dim: int, target_dim: int, hidden: int | None = None):
        super().__init__()
        hidden = hidden or 2 * dim
        self.projector = nn.Sequential(nn.Linear(dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                       nn.Linear(hidden, target_dim))

    def forward(self, hidden: torch.Tensor, targets: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        T, h, w = grid
        B = targets.shape[0]
        pooled = F.adaptive_avg_pool2d(targets.flatten(0, 1).float(), (h, w))  # (B*T, C, h, w)
        pooled = pooled.view(B, T, -1, h * w).transpose(2, 3).reshape(B, T * h * w, -1)  # (B, T*S, C)
        projected = self.projector(hidden[:B].float())  # (B, T*S, C)
        return 1 - F.cosine_similarity(projected, pooled, dim=-1).mean()


__all__ = ["DEFAULT_ENCODER", "RepresentationAlignment", "add_representation_targets", "encoder_features",
           "latent_frame_indices"]
