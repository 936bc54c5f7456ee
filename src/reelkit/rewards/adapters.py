"""Adapters for the reward models users bring, loaded from local folders (nothing downloads).

* :class:`HPSReward`: an HPS-style image-text scorer (HPSv2 / PickScore / CLIP). The score is the cosine of
  the normalised image and text embeddings, without the logit scale, after CLIP's validation transforms
  (short side resize, centre crop, normalisation) written in torch so gradients reach the pixels; the text
  branch runs without gradients. It reads a transformers ``CLIPModel`` folder
  (:meth:`HPSReward.from_folder`), or, where ``open_clip`` is installed, an open_clip architecture and
  checkpoint such as ViT-H-14 + ``HPS_v2.1_compressed.pt`` (:meth:`HPSReward.from_open_clip`).
* :class:`ViCLIPReward`: a ViCLIP-style video-text scorer: a CLIP vision tower applied to ``num_frames``
  evenly spaced frames (8 by default, ViCLIP's input), embeddings mean-pooled over time, against the text
  tower's embedding; the score is the cosine. It reads a transformers ``CLIPModel`` folder.

A folder's ``reward.json`` (``{"adapter": "viclip", "num_frames": 8}``) tells
:func:`reelkit.rewards.load_reward` which adapter reads it.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from reelkit.errors import ReelkitError
from reelkit.rewards.base import (
    ImageTextReward,
    VideoTextReward,
    gather_frames,
    resize_center_crop,
    uniform_frame_indices,
)

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _features(output) -> torch.Tensor:
    """transformers 5 returns model outputs from ``get_*_features``; 4.x returned the tensor."""
    return output if torch.is_tensor(output) else output.pooler_output


def _load_clip_folder(path: str | Path):
    """``(CLIPModel, tokenizer, mean, std)`` from a local folder, with one-line errors."""
    from transformers import AutoTokenizer, CLIPModel

    path = Path(path)
    if not (path / "config.json").is_file():
        raise ReelkitError(f"{path}: not a CLIP folder (no config.json)")
    try:
        model = CLIPModel.from_pretrained(path, local_files_only=True)
    except Exception as error:  # noqa: BLE001 - safetensors, torch and transformers each raise their own
        raise ReelkitError(f"{path}: cannot read the CLIP model ({' '.join(str(error).split())[:200]})") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ReelkitError(f"{path}: cannot read the tokenizer ({' '.join(str(error).split())[:200]})") from None
    mean, std = OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    processor = path / "preprocessor_config.json"
    if processor.is_file():
        import json

        try:
            values = json.loads(processor.read_text())
        except json.JSONDecodeError:
            raise ReelkitError(f"{processor}: corrupt file (not JSON)") from None
        mean, std = tuple(values.get("image_mean", mean)), tuple(values.get("image_std", std))
    return model, tokenizer, mean, std


class _ClipScorer(nn.Module):
    """A CLIP-like model behind two callables, ``encode_image(pixels)`` and ``encode_text(prompts)``."""

    def __init__(self, model: nn.Module, tokenizer, image_size: int, mean, std, text_max_length: int):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.text_max_length = text_max_length
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Frames ``(N, 3, H, W)`` in ``[-1, 1]`` -> normalised ``(N, 3, s, s)`` (differentiable)."""
        images = resize_center_crop((images.float() + 1) / 2, self.image_size)
        return (images - self.mean) / self.std

    def image_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        pixels = self.preprocess(images)
        dtype = next(self.model.parameters()).dtype
        return F.normalize(self._encode_image(pixels.to(dtype)).float(), dim=-1)

    @torch.no_grad()
    def text_embeddings(self, prompts: list[str]) -> torch.Tensor:
        return F.normalize(self._encode_text(list(prompts)).float(), dim=-1)

    def _encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return _features(self.model.get_image_features(pixel_values=pixels))

    def _encode_text(self, prompts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(prompts, padding="max_length", truncation=True, max_length=self.text_max_length,
                                return_tensors="pt")
        return _features(self.model.get_text_features(input_ids=tokens["input_ids"].to(self.device),
                                                      attention_mask=tokens["attention_mask"].to(self.device)))


def _clip_scorer(path: str | Path) -> _ClipScorer:
    model, tokenizer, mean, std = _load_clip_folder(path)
    max_length = min(model.config.text_config.max_position_embeddings,
                     getattr(tokenizer, "model_max_length", 77) or 77)
    return _ClipScorer(model, tokenizer, model.config.vision_config.image_size, mean, std, max_length)


class HPSReward(nn.Module, ImageTextReward):
    """HPS-style image reward: cosine of CLIP image and text embeddings on ``num_sampled_frames`` frames."""

    def __init__(self, scorer: nn.Module, num_sampled_frames: int = 5, frame_reduction: str = "mean"):
        super().__init__()
        self.scorer = scorer
        self.num_sampled_frames = num_sampled_frames
        self.frame_reduction = frame_reduction

    @classmethod
    def from_folder(cls, path: str | Path, **kwargs) -> HPSReward:
        """A transformers ``CLIPModel`` folder (weights, config, tokenizer, optional preprocessor config)."""
        return cls(_clip_scorer(path), **kwargs)

    @classmethod
    def from_open_clip(cls, architecture: str, checkpoint: str | Path, **kwargs) -> HPSReward:
        """An open_clip model (e.g. ``"ViT-H-14"``) with a local checkpoint (e.g. ``HPS_v2.1_compressed.pt``);
        needs the optional ``open_clip_torch`` package and the architecture's tokenizer files locally."""
        try:
            import open_clip
        except ImportError:
            raise ReelkitError("HPSReward.from_open_clip needs open_clip (pip install open_clip_torch); or "
                               "convert the checkpoint to a transformers CLIP folder") from None
        checkpoint = Path(checkpoint)
        if not checkpoint.is_file():
            raise ReelkitError(f"{checkpoint}: no such reward checkpoint")
        try:
            model = open_clip.create_model(architecture, pretrained=None)
            state = torch.load(checkpoint, map_location="cpu", weights_only=True)
            model.load_state_dict(state.get("state_dict", state) if isinstance(state, dict) else state)
        except (RuntimeError, KeyError, ValueError, OSError) as error:
            raise ReelkitError(f"{checkpoint}: cannot load it into open_clip {architecture} "
                               f"({' '.join(str(error).split())[:200]})") from None
        tokenizer = open_clip.get_tokenizer(architecture)
        size = model.visual.image_size
        scorer = _OpenClipScorer(model, tokenizer, size if isinstance(size, int) else size[0],
                                 OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, 77)
        return cls(scorer, **kwargs)

    def score_images(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return (self.scorer.image_embeddings(images) * self.scorer.text_embeddings(prompts)).sum(-1)


class _OpenClipScorer(_ClipScorer):
    def _encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)

    def _encode_text(self, prompts: list[str]) -> torch.Tensor:
        return self.model.encode_text(self.tokenizer(prompts).to(self.device))


class ViCLIPReward(nn.Module, VideoTextReward):
    """ViCLIP-style video reward: per-frame CLIP vision embeddings of ``num_frames`` evenly spaced frames
    (from a random start in ``[0, stride)`` when a generator is given, like T2V-Turbo's InternVideo2 input),
    mean-pooled over time, against the text embedding; the score is the cosine."""

    def __init__(self, scorer: nn.Module, num_frames: int = 8):
        super().__init__()
        self.scorer = scorer
        self.num_frames = num_frames

    @classmethod
    def from_folder(cls, path: str | Path, **kwargs) -> ViCLIPReward:
        return cls(_clip_scorer(path), **kwargs)

    def score_video(self, video: torch.Tensor, prompts: list[str],
                    generator: torch.Generator | None = None) -> torch.Tensor:
        batch, frames_in = video.shape[0], video.shape[2]
        start = 0
        stride = frames_in // self.num_frames
        if generator is not None and stride > 1:
            start = int(torch.randint(stride, (), generator=generator))
        index = uniform_frame_indices(frames_in, self.num_frames, start)
        frames = gather_frames(video, index.expand(batch, -1))  # (B, M, C, H, W)
        embeddings = self.scorer.image_embeddings(frames.flatten(0, 1)).view(batch, frames.shape[1], -1)
        clip_embedding = F.normalize(embeddings.mean(1), dim=-1)
        return (clip_embedding * self.scorer.text_embeddings(prompts)).sum(-1)


ADAPTERS = {"hps": HPSReward, "viclip": ViCLIPReward}

__all__ = ["ADAPTERS", "HPSReward", "ViCLIPReward"]
