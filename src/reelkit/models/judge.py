"""The demo-world judge: an independent video classifier that reads each object's attributes from pixels.

It is the referee of every generation benchmark (prompt adherence, FVD-demo), so it shares nothing with
the generators: its own (2+1)D convolutional architecture, its own seed, trained on rendered clips and
never used as a training signal. Objects are read in the world's layout order: slot 0 is the only
object, or the upper one of two (the world places a caption's first object in the upper band);
slot 1 is the lower one.

>>> import torch
>>> from reelkit.models.judge import WorldJudge
>>> judge = WorldJudge(channels=(8, 8, 8, 16), feature_dim=32).eval()
>>> out = judge(torch.rand(2, 3, 17, 64, 64) * 2 - 1)   # any clip; read as 9 frames at 64 px
>>> out.shape.shape, out.color.shape, out.features.shape   # (B, slots, classes), (B, feature_dim)
(torch.Size([2, 2, 6]), torch.Size([2, 2, 8]), torch.Size([2, 32]))
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from reelkit.conventions import batch_to_frames, frames_to_batch
from reelkit.data.captions import COLORS, MOTIONS, SHAPES

ATTRIBUTES = {"shape": SHAPES, "color": COLORS, "motion": MOTIONS}
MAX_OBJECTS = 2


@dataclass
class JudgeOutput:
    """Logits per object slot ``(B, 2, classes)``, object-count logits ``(B, 2)`` (1 or 2 objects), and
    the pooled ``features`` ``(B, feature_dim)`` that FVD-demo compares."""

    shape: torch.Tensor
    color: torch.Tensor
    motion: torch.Tensor
    num_objects: torch.Tensor
    features: torch.Tensor


def _conv_block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    # BatchNorm: on this task it learns colour and motion several times faster than GroupNorm
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.BatchNorm2d(cout), nn.SiLU())


class _TemporalBlock(nn.Module):
    """A (2+1)D residual block: a temporal conv (stride in time) then a spatial conv, per frame."""

    def __init__(self, channels: int, stride: int):
        super().__init__()
        self.temporal = nn.Conv3d(channels, channels, (3, 1, 1), (stride, 1, 1), (1, 0, 0))
        self.norm = nn.GroupNorm(8, channels)
        self.spatial = nn.Conv3d(channels, channels, (1, 3, 3), 1, (0, 1, 1))
        self.skip = nn.AvgPool3d((stride, 1, 1), (stride, 1, 1), ceil_mode=True) if stride > 1 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T, h, w)
        h = self.spatial(F.silu(self.norm(self.temporal(x))))
        return self.skip(x) + h


class WorldJudge(ModelMixin, ConfigMixin):
    """Reads ``(B, 3, T, H, W)`` clips in ``[-1, 1]`` (resampled to ``num_frames`` x ``size``) into
    per-object shape, colour and motion logits."""

    @register_to_config
    def __init__(self, channels: tuple[int, int, int, int] = (16, 32, 64, 96), feature_dim: int = 256,
                 num_frames: int = 9, size: int = 64):
        super().__init__()
        c0, c1, c2, c3 = channels
        # a full-resolution stem (shape lives in 1-2 px details), then two convs per scale down to 1/8
        self.frame_encoder = nn.Sequential(
            _conv_block(3, c0), _conv_block(c0, c1, 2), _conv_block(c1, c1), _conv_block(c1, c2, 2),
            _conv_block(c2, c2), _conv_block(c2, c3, 2), _conv_block(c3, c3))
        self.temporal = nn.Sequential(_TemporalBlock(c3, 2), _TemporalBlock(c3, 2))
        # 2 rows: the world's upper and lower object bands. Max pooling keeps a small object's shape evidence
        # whole wherever it sits; averaging keeps where it moves.
        self.pool = nn.AdaptiveAvgPool3d((3, 2, 2))
        self.max_pool = nn.AdaptiveMaxPool3d((3, 2, 2))
        self.project = nn.Sequential(nn.Linear(2 * c3 * 12, feature_dim), nn.SiLU(),
                                     nn.Linear(feature_dim, feature_dim))
        self.heads = nn.ModuleDict({name: nn.Linear(feature_dim, MAX_OBJECTS * len(values))
                                    for name, values in ATTRIBUTES.items() if name != "shape"})
        self.count_head = nn.Linear(feature_dim, MAX_OBJECTS)
        # Shape is read where the object is: per-position shape evidence on each frame's features, pooled
        # with an objectness attention over the frame (one object) or over its band (upper / lower of two).
        # Position-invariant evidence learns shape far faster than a head on globally pooled features.
        self.shape_evidence = nn.Conv2d(c3, len(ATTRIBUTES["shape"]), 1)
        self.objectness = nn.Conv2d(c3, 1, 1)

    def resample(self, video: torch.Tensor) -> torch.Tensor:
        """Bring any clip to the judge's frame count and size (trilinear)."""
        target = (self.config.num_frames, self.config.size, self.config.size)
        if tuple(video.shape[2:]) == target:
            return video
        # align_corners: 17 frames -> 9 takes every other frame exactly
        return F.interpolate(video, size=target, mode="trilinear", align_corners=True)

    def _shape_logits(self, frames: torch.Tensor, batch: int, count_probs: torch.Tensor) -> torch.Tensor:
        """Per-slot shape logits ``(B, 2, shapes)`` from frame features ``(B*T, C, h, w)``."""
        evidence = batch_to_frames(self.shape_evidence(frames), batch).flatten(2)  # (B, shapes, T*h*w)
        objectness = batch_to_frames(self.objectness(frames), batch)  # (B, 1, T, h, w)
        rows = torch.arange(objectness.shape[3], device=frames.device)
        upper = (rows < objectness.shape[3] / 2).view(1, 1, 1, -1, 1).expand_as(objectness)

        def pooled(region: torch.Tensor | None) -> torch.Tensor:
            logits = objectness if region is None else objectness.masked_fill(~region, float("-inf"))
            weights = torch.softmax(logits.flatten(2).float(), dim=-1).to(evidence.dtype)  # (B, 1, T*h*w)
            return (evidence * weights).sum(-1)  # (B, shapes)

        whole, top, bottom = pooled(None), pooled(upper), pooled(~upper)
        one, two = count_probs.detach().unbind(-1)  # the only object is anywhere; of two, slot 0 is the upper
        first = one[:, None] * whole + two[:, None] * top
        return torch.stack([first, bottom], dim=1)

    def forward(self, video: torch.Tensor) -> JudgeOutput:
        video = self.resample(video.to(self.dtype))
        frames = self.frame_encoder(frames_to_batch(video))  # (B*T, c3, H/8, W/8)
        x = self.temporal(batch_to_frames(frames, video.shape[0]))  # (B, c3, T/4, H/8, W/8)
        pooled = torch.cat([self.pool(x).flatten(1), self.max_pool(x).flatten(1)], dim=1)
        features = self.project(pooled)  # (B, feature_dim)
        hidden = F.silu(features)
        logits = {name: head(hidden).view(len(video), MAX_OBJECTS, -1) for name, head in self.heads.items()}
        num_objects = self.count_head(hidden)
        logits["shape"] = self._shape_logits(frames, len(video), torch.softmax(num_objects.float(), -1))
        return JudgeOutput(**logits, num_objects=num_objects, features=features)


def load_judge(path: str | None = None) -> WorldJudge:
    """The judge at ``path``, or the bundled one; eval mode, fp32."""
    from reelkit.loading import load_model

    return load_model(WorldJudge, path, "judge").eval()


__all__ = ["ATTRIBUTES", "JudgeOutput", "WorldJudge", "load_judge"]
