"""The built-in demo rewards: small CLIP-style dual encoders trained contrastively on the demo world.

:class:`DemoImageTextReward` embeds single frames (it can read shapes, colours and the background, not
motion); :class:`DemoVideoTextReward` embeds the clip with a (2+1)D tower (it also reads motion). Both embed
the prompt with the demo world's word-level tokenizer and a small transformer text encoder, and score a clip
by the cosine of the two normalised embeddings (HPS-style: no logit scale). They are trained by
``reelkit train rewards`` (:mod:`reelkit.train.rewards`) with their own seed, and share no weights with the
judge, which grades the generators they help train.

>>> import torch
>>> from reelkit.rewards.demo import DemoVideoTextReward
>>> reward = DemoVideoTextReward(channels=(8, 8, 16), embed_dim=16, text_dim=16, text_layers=1, size=32)
>>> reward.score(torch.zeros(1, 3, 17, 48, 64), ["a red ball rises"]).shape
torch.Size([1])
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from reelkit.conventions import batch_to_frames, frames_to_batch
from reelkit.models.judge import _TemporalBlock
from reelkit.models.text import MAX_LENGTH, WorldTextEncoder, build_tokenizer, tokenize_prompts
from reelkit.rewards.base import ImageTextReward, VideoTextReward, resize_center_crop


@lru_cache(maxsize=1)
def world_tokenizer():
    """The demo world's tokenizer (rebuilt from the vocabulary, so reward folders need not carry it)."""
    return build_tokenizer()


def _conv(cin: int, cout: int, stride: int) -> nn.Sequential:
    # GroupNorm, not BatchNorm: a reward must read generated frames the same in train and eval mode
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(min(8, cout), cout), nn.SiLU())


def _frame_encoder(channels: tuple[int, ...]) -> nn.Sequential:
    """A full-resolution stem, then one stride-2 conv per further width: ``(N, 3, s, s) -> (N, c, s/2^k, ...)``."""
    layers, cin = [_conv(3, channels[0], 1)], channels[0]
    for cout in channels[1:]:
        layers += [_conv(cin, cout, 2), _conv(cout, cout, 1)]
        cin = cout
    return nn.Sequential(*layers)


class _DualEncoder(ModelMixin, ConfigMixin):
    """The text tower and the training/scoring logic both demo rewards share."""

    def _build_text(self, vocab_size: int, text_dim: int, text_layers: int, text_heads: int, embed_dim: int,
                    max_length: int) -> None:
        self.text_encoder = WorldTextEncoder(vocab_size=vocab_size, dim=text_dim, num_layers=text_layers,
                                             num_heads=text_heads, max_length=max_length)
        self.text_projection = nn.Linear(text_dim, embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        """Normalised prompt embeddings ``(B, embed_dim)`` (masked mean over the tokens)."""
        tokens = tokenize_prompts(list(prompts), world_tokenizer())
        ids = tokens["input_ids"][:, : self.config.max_length].to(self.device)
        mask = tokens["attention_mask"][:, : self.config.max_length].to(self.device)
        hidden = self.text_encoder(ids, mask)
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)
        return F.normalize(self.text_projection(pooled).float(), dim=-1)

    def encode_visual(self, pixels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def similarity(self, pixels: torch.Tensor, prompts: list[str], text_grad: bool = False) -> torch.Tensor:
        """Cosine of each visual input with its own prompt ``(B,)``; the text branch runs without gradients
        unless ``text_grad``."""
        with torch.set_grad_enabled(text_grad and torch.is_grad_enabled()):
            text = self.encode_text(prompts)
        return (self.encode_visual(pixels) * text).sum(-1)

    def contrastive_logits(self, pixels: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """Scaled cosine logits ``(B, P)`` of B visual inputs against P prompts, for InfoNCE training."""
        scale = self.logit_scale.clamp(max=math.log(100)).exp()
        return scale * self.encode_visual(pixels) @ self.encode_text(prompts).T


class DemoImageTextReward(_DualEncoder, ImageTextReward):
    """An image-text dual encoder over frames ``(N, 3, H, W)`` in ``[-1, 1]`` (resized to ``size``)."""

    @register_to_config
    def __init__(self, channels: tuple[int, ...] = (32, 64, 128, 192), embed_dim: int = 128, text_dim: int = 128,
                 text_layers: int = 2, text_heads: int = 4, vocab_size: int | None = None, size: int = 64,
                 max_length: int = MAX_LENGTH, num_sampled_frames: int = 5, frame_reduction: str = "mean"):
        super().__init__()
        vocab_size = vocab_size or len(world_tokenizer())
        self.frame_encoder = _frame_encoder(tuple(channels))
        self.image_projection = nn.Sequential(nn.Linear(2 * channels[-1], embed_dim), nn.SiLU(),
                                              nn.Linear(embed_dim, embed_dim))
        self._build_text(vocab_size, text_dim, text_layers, text_heads, embed_dim, max_length)
        self.num_sampled_frames = num_sampled_frames
        self.frame_reduction = frame_reduction

    def encode_visual(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised image embeddings ``(N, embed_dim)``."""
        images = resize_center_crop(images.to(self.dtype), self.config.size)
        x = self.frame_encoder(images)
        pooled = torch.cat([x.mean((2, 3)), x.amax((2, 3))], dim=1)
        return F.normalize(self.image_projection(pooled).float(), dim=-1)

    def score_images(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return self.similarity(images, prompts)


class DemoVideoTextReward(_DualEncoder, VideoTextReward):
    """A video-text dual encoder over clips ``(B, 3, T, H, W)`` in ``[-1, 1]``, read as ``num_frames``
    frames (evenly spaced) at ``size``: a per-frame conv tower, then (2+1)D temporal blocks."""

    @register_to_config
    def __init__(self, channels: tuple[int, ...] = (32, 64, 128, 192), embed_dim: int = 128, text_dim: int = 128,
                 text_layers: int = 2, text_heads: int = 4, vocab_size: int | None = None, size: int = 64,
                 num_frames: int = 9, max_length: int = MAX_LENGTH):
        super().__init__()
        vocab_size = vocab_size or len(world_tokenizer())
        width = channels[-1]
        self.frame_encoder = _frame_encoder(tuple(channels))
        self.temporal = nn.Sequential(_TemporalBlock(width, 2), _TemporalBlock(width, 2))
        self.video_projection = nn.Sequential(nn.Linear(2 * width * 8, embed_dim), nn.SiLU(),
                                              nn.Linear(embed_dim, embed_dim))
        self._build_text(vocab_size, text_dim, text_layers, text_heads, embed_dim, max_length)

    def encode_visual(self, video: torch.Tensor) -> torch.Tensor:
        """Normalised clip embeddings ``(B, embed_dim)``."""
        video = video.to(self.dtype)
        frames_in = video.shape[2]
        index = torch.linspace(0, frames_in - 1, self.config.num_frames).round().long().to(video.device)
        video = video.index_select(2, index)
        frames = resize_center_crop(frames_to_batch(video), self.config.size)
        x = self.temporal(batch_to_frames(self.frame_encoder(frames), video.shape[0]))  # (B, c, T', h, w)
        pooled = torch.cat([F.adaptive_avg_pool3d(x, (2, 2, 2)).flatten(1),
                            F.adaptive_max_pool3d(x, (2, 2, 2)).flatten(1)], dim=1)
        return F.normalize(self.video_projection(pooled).float(), dim=-1)

    def score_video(self, video: torch.Tensor, prompts: list[str],
                    generator: torch.Generator | None = None) -> torch.Tensor:
        return self.similarity(video, prompts)


DEMO_CLASSES = {cls.__name__: cls for cls in (DemoImageTextReward, DemoVideoTextReward)}

__all__ = ["DEMO_CLASSES", "DemoImageTextReward", "DemoVideoTextReward", "world_tokenizer"]
