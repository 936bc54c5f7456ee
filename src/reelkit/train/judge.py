"""Recipe: train the demo-world judge (:class:`~reelkit.models.judge.WorldJudge`) on rendered clips.

Clips are rendered fresh every step (training seeds only), then degraded at random (blur, noise, a
small colour shift) so the judge reads decoded, slightly blurry generations as well as clean renders.
Its seed and architecture are its own: the judge must stay independent of every generator it grades.

Launch::

    reelkit train judge --config configs/judge.yaml
    accelerate launch --multi_gpu --num_processes 2 -m reelkit train judge --config configs/judge.yaml
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from reelkit.train.common import apply_gradients, autocast, build, check_mixed_precision, load_config
from reelkit.train.recipe import Recipe


@dataclass
class JudgeTrainConfig:
    output_dir: str = "runs/judge"
    model: dict = field(default_factory=dict)
    num_frames: int = 9
    size: int = 64
    batch_size: int = 32
    learning_rate: float = 1e-3
    warmup_steps: int = 50
    max_steps: int = 2000
    time_limit_minutes: float | None = None
    degrade_probability: float = 0.6
    save_every: int = 200
    log_every: int = 20
    seed: int = 1234  # not the generators' seed
    threads: int | None = None
    num_workers: int = 1
    mixed_precision: str = "no"  # "bf16": autocast (see reelkit.train.common.autocast)

    def __post_init__(self):
        check_mixed_precision(self.mixed_precision)


def degrade(video: torch.Tensor, generator: torch.Generator, probability: float) -> torch.Tensor:
    """Blur, noise and shift the colours of a random part of the batch ``(B, C, T, H, W)``."""
    out = video.clone()
    for i in range(len(video)):
        if torch.rand((), generator=generator) >= probability:
            continue
        sigma = float(torch.empty(()).uniform_(0.3, 1.3, generator=generator))
        radius = 2
        taps = torch.exp(-0.5 * (torch.arange(-radius, radius + 1.0) / sigma) ** 2)
        taps = taps / taps.sum()
        clip = out[i].transpose(0, 1)  # (T, C, H, W)
        channels = clip.shape[1]
        clip = F.conv2d(F.pad(clip, (radius,) * 4, mode="replicate"), taps.view(1, 1, 1, -1).repeat(channels, 1, 1, 1),
                        groups=channels)
        clip = F.conv2d(clip, taps.view(1, 1, -1, 1).repeat(channels, 1, 1, 1), groups=channels)
        noise = float(torch.empty(()).uniform_(0.0, 0.06, generator=generator))
        clip = clip + noise * torch.randn(clip.shape, generator=generator)
        clip = clip + 0.06 * (torch.rand(1, channels, 1, 1, generator=generator) - 0.5)
        out[i] = clip.clamp(-1, 1).transpose(0, 1)
    return out


def judge_loss(output, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
    """Cross-entropy over object slots (absent objects are ignored) and over the object count."""
    losses, accuracy = {}, {}
    for name in ("shape", "color", "motion"):
        logits, target = getattr(output, name).float(), batch[name]
        losses[name] = F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=-1)
        known = target >= 0
        accuracy[name] = (logits.argmax(-1)[known] == target[known]).float().mean().item()
    losses["count"] = F.cross_entropy(output.num_objects.float(), batch["num_objects"] - 1)
    return sum(losses.values()), accuracy


class JudgeRecipe(Recipe):
    """The judge: freshly rendered clips, degraded like decoded generations, per-object cross-entropy."""

    figures = ("loss", "shape", "color", "motion")

    def _setup_data(self) -> None:
        from torch.utils.data import DataLoader

        from reelkit.data.datasets import WorldStream

        config = self.config
        stream = WorldStream(config.num_frames, config.size, seed=config.seed, rank=self.accelerator.process_index)
        self.batches = iter(DataLoader(stream, batch_size=config.batch_size, num_workers=config.num_workers))

    def _setup_models(self) -> None:
        from reelkit.models.judge import WorldJudge

        config = self.config
        self.judge = build(WorldJudge, "model", config.model, num_frames=config.num_frames, size=config.size)

    def _setup_optimizer(self) -> None:
        from diffusers.optimization import get_cosine_schedule_with_warmup

        config = self.config
        self.optimizer = torch.optim.AdamW(self.judge.parameters(), lr=config.learning_rate, weight_decay=0.05)
        self.scheduler = get_cosine_schedule_with_warmup(self.optimizer, config.warmup_steps, config.max_steps)

    def _prepare(self) -> None:
        self.judge, self.optimizer = self.accelerator.prepare(self.judge, self.optimizer)
        self.accelerator.register_for_checkpointing(self.scheduler)

    def train_step(self) -> dict[str, float]:
        accelerator = self.accelerator
        batch = {k: v.to(accelerator.device) if torch.is_tensor(v) else v for k, v in next(self.batches).items()}
        video = degrade(batch["video"], self.generator, self.config.degrade_probability)
        with autocast(self.config.mixed_precision, accelerator.device):
            output = self.judge(video)
        loss, accuracy = judge_loss(output, batch)
        apply_gradients(accelerator, loss, self.judge.parameters(), self.optimizer, self.scheduler)
        return {"loss": loss.item(), **accuracy}

    def export(self, destination: Path) -> None:
        self.accelerator.unwrap_model(self.judge).save_pretrained(destination)
        self.accelerator.print(f"wrote {destination}")


def train(config: JudgeTrainConfig) -> Path:
    """Run the recipe; return ``output_dir/model``."""
    return JudgeRecipe(config).run()


def run(config_path: str | Path, **overrides) -> Path:
    return train(load_config(JudgeTrainConfig, config_path, **overrides))
