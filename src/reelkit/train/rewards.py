"""Recipe: train the demo rewards (:mod:`reelkit.rewards.demo`) contrastively on demo-world clips.

Each step renders fresh training clips with their captions. Both dual encoders learn a symmetric InfoNCE
(clip -> caption over the batch's captions, caption -> clip over the batch's clips); clip -> caption also
sees **hard negatives**: the clip's own caption with one attribute changed (``perturb_caption``): a shape,
colour or background for the image reward (a single frame cannot show motion), and also a motion for the
video reward. Their seed is their own and they share nothing with the judge.

Launch::

    reelkit train rewards --config configs/rewards.yaml
    accelerate launch --multi_gpu --num_processes 2 -m reelkit train rewards --config configs/rewards.yaml

The trained rewards are written as fp16 safetensors in diffusers layout to ``output_dir/image`` and
``output_dir/video``; load them with ``reelkit.rewards.load_reward(folder)``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import IterableDataset, get_worker_info

from reelkit.errors import ReelkitError
from reelkit.train.common import apply_gradients, autocast, check_mixed_precision, load_config
from reelkit.train.recipe import Recipe

REWARDS = ("image", "video")


@dataclass
class RewardsTrainConfig:
    output_dir: str = "runs/rewards"
    rewards: list = field(default_factory=lambda: list(REWARDS))  # which of the two to train
    image_model: dict = field(default_factory=dict)
    video_model: dict = field(default_factory=dict)
    num_frames: int = 9
    size: int = 64
    batch_size: int = 32
    hard_negatives: int = 2  # perturbed captions per clip
    frames_per_clip: int = 2  # frames the image reward sees per clip and step
    learning_rate: float = 1e-3
    warmup_steps: int = 50
    max_steps: int = 2000
    time_limit_minutes: float | None = None
    save_every: int = 200
    log_every: int = 20
    seed: int = 2718  # not the generators' nor the judge's seed
    threads: int | None = None
    num_workers: int = 1
    mixed_precision: str = "no"

    def __post_init__(self):
        check_mixed_precision(self.mixed_precision)
        unknown = sorted(set(self.rewards) - set(REWARDS))
        if unknown or not self.rewards:
            raise ReelkitError(f"rewards must be a non-empty list of {', '.join(REWARDS)}; got {self.rewards}")


def perturb_caption(scene, rng: np.random.Generator, motion: bool) -> str:
    """A caption of ``scene`` with one attribute changed: an object's shape, colour or (if ``motion``)
    motion, or the background's colour or texture."""
    from reelkit.data.captions import BACKGROUND_COLORS, COLORS, MOTIONS, SHAPES, TEXTURES, write_caption

    objects, background = list(scene.objects), scene.background
    choices = ["shape", "color", "background"] + (["motion", "motion"] if motion else [])
    what = choices[int(rng.integers(len(choices)))]

    def other(values, current):
        return [v for v in values if v != current][int(rng.integers(len(values) - 1))]

    if what == "background":
        if background.kind == "texture":
            background = dataclasses.replace(background, texture=other(TEXTURES, background.texture))
        else:
            colors = list(background.colors)
            i = int(rng.integers(len(colors)))
            colors[i] = other(BACKGROUND_COLORS, colors[i])
            background = dataclasses.replace(background, colors=tuple(colors))
    else:
        i = int(rng.integers(len(objects)))
        values = {"shape": SHAPES, "color": COLORS, "motion": MOTIONS}[what]
        objects[i] = dataclasses.replace(objects[i], **{what: other(values, getattr(objects[i], what))})
    return write_caption(objects, background, rng)


class RewardStream(IterableDataset):
    """Fresh training clips with their caption and ``hard_negatives`` perturbed captions for each reward."""

    def __init__(self, num_frames: int, size: int, hard_negatives: int, seed: int, rank: int = 0):
        self.num_frames, self.size, self.hard_negatives = num_frames, size, hard_negatives
        self.seed, self.rank = seed, rank

    def __iter__(self):
        from reelkit.data.datasets import HELDOUT_SEED_BASE
        from reelkit.data.world import render_clip

        worker = get_worker_info()
        rng = np.random.default_rng([self.seed, self.rank, worker.id if worker is not None else 0, 0x5EED])
        while True:
            clip = render_clip(int(rng.integers(0, HELDOUT_SEED_BASE)), self.num_frames, self.size)
            yield {"video": clip.video, "caption": clip.caption,
                   "negatives_image": [perturb_caption(clip.scene, rng, False) for _ in range(self.hard_negatives)],
                   "negatives_video": [perturb_caption(clip.scene, rng, True) for _ in range(self.hard_negatives)]}


def info_nce(model, pixels: torch.Tensor, captions: list[str], negatives: list[str]) -> tuple[torch.Tensor, dict]:
    """Symmetric InfoNCE over the batch, clip -> caption also against the hard negatives.

    ``negatives`` are ``B * K`` captions, K per clip. Returns the loss and accuracies (top-1 over the batch's
    captions, and positive above all of the clip's own hard negatives)."""
    batch = len(captions)
    logits = model.contrastive_logits(pixels, captions + negatives).float()  # (B, B + B*K)
    target = torch.arange(batch, device=logits.device)
    loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits[:, :batch].T, target))
    with torch.no_grad():
        top1 = (logits[:, :batch].argmax(1) == target).float().mean().item()
        if negatives:
            own = logits[:, batch:].view(batch, batch, -1)[target, target]  # (B, K): each clip's own negatives
            hard = (logits[target, target][:, None] > own).all(1).float().mean().item()
        else:
            hard = float("nan")
    return loss, {"top1": top1, "hard": hard}


class RewardPair(torch.nn.Module):
    """The rewards being trained, behind one ``forward`` that returns the step's loss, so that one
    DDP-wrapped call covers both (several processes)."""

    def __init__(self, config: RewardsTrainConfig):
        from reelkit.rewards.demo import DemoImageTextReward, DemoVideoTextReward

        super().__init__()
        self.rewards = torch.nn.ModuleDict()
        if "image" in config.rewards:
            self.rewards["image"] = DemoImageTextReward(**{"size": config.size, **config.image_model})
        if "video" in config.rewards:
            self.rewards["video"] = DemoVideoTextReward(**{"size": config.size, "num_frames": config.num_frames,
                                                           **config.video_model})

    def forward(self, batch: dict, frame_index: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        from reelkit.rewards.base import gather_frames

        video, captions = batch["video"], batch["caption"]
        losses, figures = [], {}
        if "image" in self.rewards:
            frames = gather_frames(video, frame_index)  # (B, F, C, H, W): F frames, one positive each
            loss, accuracy = _image_loss(self.rewards["image"], frames, captions, batch["negatives_image"])
            losses.append(loss)
            figures.update({f"img_{k}": v for k, v in accuracy.items()})
        if "video" in self.rewards:
            negatives = [n for negs in batch["negatives_video"] for n in negs]
            loss, accuracy = info_nce(self.rewards["video"], video, captions, negatives)
            losses.append(loss)
            figures.update({f"vid_{k}": v for k, v in accuracy.items()})
        return sum(losses), figures


class RewardsRecipe(Recipe):
    """The demo rewards: rendered clips with hard-negative captions, symmetric InfoNCE."""

    log_csv = False

    def _setup_data(self) -> None:
        from torch.utils.data import DataLoader

        config = self.config
        stream = RewardStream(config.num_frames, config.size, config.hard_negatives, config.seed,
                              rank=self.accelerator.process_index)
        self.batches = iter(DataLoader(stream, batch_size=config.batch_size, num_workers=config.num_workers,
                                       collate_fn=_collate))

    def _setup_models(self) -> None:
        self.models = RewardPair(self.config)
        self.figures = ("loss", *(f"{prefix}_{k}" for prefix in ("img", "vid")
                                  if {"img": "image", "vid": "video"}[prefix] in self.models.rewards
                                  for k in ("top1", "hard")))

    def _setup_optimizer(self) -> None:
        from diffusers.optimization import get_cosine_schedule_with_warmup

        config = self.config
        self.optimizer = torch.optim.AdamW(self.models.parameters(), lr=config.learning_rate, weight_decay=0.05)
        self.scheduler = get_cosine_schedule_with_warmup(self.optimizer, config.warmup_steps, config.max_steps)

    def _prepare(self) -> None:
        self.models, self.optimizer = self.accelerator.prepare(self.models, self.optimizer)
        self.accelerator.register_for_checkpointing(self.scheduler)

    def train_step(self) -> dict[str, float]:
        from reelkit.rewards.base import sample_frame_indices

        config, accelerator = self.config, self.accelerator
        batch = next(self.batches)
        batch["video"] = batch["video"].to(accelerator.device)
        frame_index = sample_frame_indices(batch["video"].shape[2], config.frames_per_clip, config.batch_size,
                                           self.generator)
        with autocast(config.mixed_precision, accelerator.device):
            loss, figures = self.models(batch, frame_index)
        apply_gradients(accelerator, loss, self.models.parameters(), self.optimizer, self.scheduler)
        return {"loss": loss.item(), **figures}

    def destination(self) -> Path:
        return self.output_dir  # one folder per reward inside it

    def export(self, destination: Path) -> None:
        for name, model in self.accelerator.unwrap_model(self.models).rewards.items():
            export_reward(model, destination / name)
            self.accelerator.print(f"wrote {destination / name}")


def train(config: RewardsTrainConfig) -> Path:
    """Run the recipe; return ``output_dir`` (holding ``image`` and/or ``video`` reward folders)."""
    return RewardsRecipe(config).run()


def _image_loss(model, frames: torch.Tensor, captions: list[str], negatives: list[list[str]]):
    """InfoNCE of each of a clip's F frames against the batch's captions (+ the clip's hard negatives),
    averaged over the frames."""
    losses, accuracies = [], []
    flat = [n for negs in negatives for n in negs]
    for i in range(frames.shape[1]):
        loss, accuracy = info_nce(model, frames[:, i], captions, flat)
        losses.append(loss)
        accuracies.append(accuracy)
    mean = {k: float(np.mean([a[k] for a in accuracies])) for k in accuracies[0]}
    return sum(losses) / len(losses), mean


def _collate(items: list[dict]) -> dict:
    return {"video": torch.stack([item["video"] for item in items]),
            "caption": [item["caption"] for item in items],
            "negatives_image": [item["negatives_image"] for item in items],
            "negatives_video": [item["negatives_video"] for item in items]}


def export_reward(model, destination: str | Path) -> Path:
    """Save a demo reward as fp16 safetensors (diffusers layout), swapped in only once complete."""
    import copy
    import shutil

    from reelkit.loading import swap_in_folder

    destination = Path(destination)
    staging = destination.with_name(f".{destination.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    copy.deepcopy(model).half().save_pretrained(staging, safe_serialization=True)
    return swap_in_folder(staging, destination)


def run(config_path: str | Path, **overrides) -> Path:
    return train(load_config(RewardsTrainConfig, config_path, **overrides))
