"""One interface for differentiable text-conditioned rewards on videos, and a loader by name or folder.

A reward model maps a batch of clips ``(B, C, T, H, W)`` in ``[-1, 1]`` and their prompts to one score per
clip ``(B,)``, differentiable with respect to the pixels (T2V-Turbo ascends it through the VAE decoder).
Two kinds exist:

* **image** rewards (``kind == "image"``, e.g. HPS) score frames: ``num_sampled_frames`` frames (M) are drawn
  per clip without replacement, scored with the prompt, and averaged (``frame_reduction="sum"`` gives the
  paper's sum over M instead);
* **video** rewards (``kind == "video"``, e.g. ViCLIP / InternVideo2) score the clip as a whole.

>>> import torch
>>> from reelkit.rewards import DemoImageTextReward
>>> reward = DemoImageTextReward(channels=(8, 8, 16), embed_dim=16, text_dim=16, text_layers=1, size=32)
>>> video = (torch.rand(2, 3, 9, 32, 32) * 2 - 1).requires_grad_()
>>> scores = reward.score(video, ["a red ball rises", "a blue box falls"])
>>> scores.shape, reward.kind
(torch.Size([2]), 'image')
>>> scores.sum().backward(); video.grad.abs().sum() > 0
tensor(True)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F

from reelkit.errors import ReelkitError

KINDS = ("image", "video")
FRAME_REDUCTIONS = ("mean", "sum")
ADAPTER_FILE = "reward.json"  # marks a user's CLIP folder as an HPS-style or ViCLIP-style reward


@runtime_checkable
class RewardModel(Protocol):
    """What distillation needs of a reward: its kind and a differentiable ``score``."""

    kind: str

    def score(self, video: torch.Tensor, prompts: list[str],
              generator: torch.Generator | None = None) -> torch.Tensor:
        """``video`` ``(B, C, T, H, W)`` in ``[-1, 1]`` and ``B`` prompts -> scores ``(B,)``."""
        ...


def check_video(video: torch.Tensor, prompts: list[str]) -> None:
    if video.ndim != 5 or video.shape[1] != 3:
        raise ReelkitError(f"a reward scores videos (B, 3, T, H, W); got shape {tuple(video.shape)}")
    if len(prompts) != video.shape[0]:
        raise ReelkitError(f"{video.shape[0]} videos but {len(prompts)} prompts")


def sample_frame_indices(num_frames: int, count: int, batch: int,
                         generator: torch.Generator | None = None) -> torch.Tensor:
    """``(batch, min(count, num_frames))`` frame indices, drawn per clip without replacement."""
    count = min(count, num_frames)
    return torch.stack([torch.randperm(num_frames, generator=generator)[:count] for _ in range(batch)])


def uniform_frame_indices(num_frames: int, count: int, start: int = 0) -> torch.Tensor:
    """``count`` frames spread evenly over the clip (ViCLIP/InternVideo-style input), from ``start``."""
    if num_frames <= count:
        return torch.arange(num_frames)
    stride = max((num_frames - start) // count, 1)
    return (start + stride * torch.arange(count)).clamp(max=num_frames - 1)


def gather_frames(video: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """``video`` ``(B, C, T, H, W)`` and indices ``(B, M)`` -> frames ``(B, M, C, H, W)`` (differentiable)."""
    frames = video.transpose(1, 2)  # (B, T, C, H, W)
    index = indices.to(video.device).view(*indices.shape, 1, 1, 1).expand(-1, -1, *frames.shape[2:])
    return torch.gather(frames, 1, index)


def resize_center_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """Differentiable CLIP-style preprocessing geometry: short side to ``size`` (bilinear), centre crop."""
    height, width = images.shape[-2:]
    if (height, width) != (size, size):
        scale = size / min(height, width)
        new = (max(size, round(height * scale)), max(size, round(width * scale)))
        images = F.interpolate(images, size=new, mode="bilinear", align_corners=False, antialias=scale < 1)
        top, left = (new[0] - size) // 2, (new[1] - size) // 2
        images = images[..., top:top + size, left:left + size]
    return images


class ImageTextReward:
    """Mixin for image rewards: subclasses implement ``score_images(images (N, C, H, W) in [-1, 1], prompts)``;
    ``score`` draws M frames per clip and reduces their scores (mean by default)."""

    kind = "image"
    num_sampled_frames: int = 5
    frame_reduction: str = "mean"

    def score_images(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    def score(self, video: torch.Tensor, prompts: list[str],
              generator: torch.Generator | None = None) -> torch.Tensor:
        check_video(video, prompts)
        if self.frame_reduction not in FRAME_REDUCTIONS:
            raise ReelkitError(f"frame_reduction must be one of {', '.join(FRAME_REDUCTIONS)}, "
                               f"got {self.frame_reduction!r}")
        batch = video.shape[0]
        indices = sample_frame_indices(video.shape[2], self.num_sampled_frames, batch, generator)
        frames = gather_frames(video, indices)  # (B, M, C, H, W)
        count = frames.shape[1]
        scores = self.score_images(frames.flatten(0, 1), [p for p in prompts for _ in range(count)])
        scores = scores.view(batch, count)
        return scores.mean(1) if self.frame_reduction == "mean" else scores.sum(1)


class VideoTextReward:
    """Mixin for video rewards: subclasses implement ``score_video(video, prompts)``."""

    kind = "video"

    def score_video(self, video: torch.Tensor, prompts: list[str],
                    generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError

    def score(self, video: torch.Tensor, prompts: list[str],
              generator: torch.Generator | None = None) -> torch.Tensor:
        check_video(video, prompts)
        return self.score_video(video, prompts, generator)


# ---------------------------------------------------------------------------------------------- loading

BUNDLED = {"demo-image": "rewards/image", "demo-video": "rewards/video"}
_REGISTRY: dict[str, Callable[..., RewardModel]] = {}


def register_reward(name: str, loader: Callable[..., RewardModel]) -> None:
    """Make ``load_reward(name)`` call ``loader(**kwargs)`` (e.g. a site's own reward checkpoints)."""
    _REGISTRY[name] = loader


def _read_json(file: Path) -> dict:
    try:
        value = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ReelkitError(f"{file}: corrupt file (not JSON)") from None
    if not isinstance(value, dict):
        raise ReelkitError(f"{file}: corrupt file (not a JSON object)")
    return value


def load_reward(name_or_path: str | Path, adapter: str | None = None, **kwargs) -> RewardModel:
    """A reward model by registered name (``demo-image``, ``demo-video``) or from a local folder.

    A folder is either a demo reward saved by reelkit (``config.json`` naming ``DemoImageTextReward`` or
    ``DemoVideoTextReward``) or a transformers CLIP folder, read as an HPS-style image reward or a
    ViCLIP-style video reward: ``adapter="hps"`` / ``"viclip"``, or the folder's ``reward.json``
    (``{"adapter": "viclip", "num_frames": 8}``), default ``hps``. ``kwargs`` go to the adapter or model
    (e.g. ``num_sampled_frames``). Missing or corrupt files raise a one-line :class:`ReelkitError`. The
    reward comes back in eval mode, fp32, with its parameters frozen (gradients still reach the video).
    """
    from reelkit.rewards.adapters import ADAPTERS
    from reelkit.rewards.demo import DEMO_CLASSES

    key = str(name_or_path)
    if key in _REGISTRY:
        return _REGISTRY[key](**kwargs)
    if key in BUNDLED:
        from reelkit.paths import ASSETS_DIR

        path = ASSETS_DIR / BUNDLED[key]
        if not (path / "config.json").is_file():
            raise ReelkitError(f"the bundled reward {key!r} is not installed ({path} is missing); train one with "
                               "'reelkit train rewards --config configs/rewards.yaml' and pass its folder")
    else:
        path = Path(name_or_path)
    if not path.exists():
        known = ", ".join(sorted({*BUNDLED, *_REGISTRY}))
        raise ReelkitError(f"{path}: no such reward model folder (or a name: {known})")
    if not path.is_dir():
        raise ReelkitError(f"{path}: a reward model is a folder (config.json + weights), not a file")
    if not (path / "config.json").is_file():
        raise ReelkitError(f"{path}: not a reward model folder (no config.json)")
    config = _read_json(path / "config.json")
    class_name = config.get("_class_name")
    if class_name in DEMO_CLASSES:
        if adapter is not None:
            raise ReelkitError(f"{path}: is a {class_name}, adapter={adapter!r} does not apply")
        from reelkit.loading import load_model

        model = load_model(DEMO_CLASSES[class_name], path, "")
        for name, value in kwargs.items():
            if name not in ("num_sampled_frames", "frame_reduction") or not hasattr(model, name):
                raise ReelkitError(f"{class_name} has no option {name!r}")
            setattr(model, name, value)
    else:
        if config.get("model_type") != "clip":
            raise ReelkitError(f"{path}: not a reward model (expected a reelkit demo reward or a CLIP folder, "
                               f"found {class_name or config.get('model_type') or 'an unknown config'})")
        options = _read_json(path / ADAPTER_FILE) if (path / ADAPTER_FILE).is_file() else {}
        marked = options.pop("adapter", "hps")
        if adapter is not None and adapter != marked:
            options = {}  # reward.json's options belong to the adapter it names
        adapter = adapter or marked
        if adapter not in ADAPTERS:
            raise ReelkitError(f"unknown reward adapter {adapter!r}; known: {', '.join(ADAPTERS)}")
        model = ADAPTERS[adapter].from_folder(path, **{**options, **kwargs})
    model.eval().requires_grad_(False)
    return model


__all__ = ["ADAPTER_FILE", "BUNDLED", "ImageTextReward", "KINDS", "RewardModel", "VideoTextReward",
           "gather_frames", "load_reward", "register_reward", "resize_center_crop", "sample_frame_indices",
           "uniform_frame_indices"]
