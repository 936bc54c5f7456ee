"""Recipe: train MarDini's planner and generator through the progressive stages of the paper (section 2.4).

Data: 17-frame clips (demo world and camera moves over natural photos) encoded once into per-frame
image-VAE latents at the generator's size and at the planner's (:mod:`reelkit.train.frame_latents`).
Each step cuts a sub-clip of ``frames`` frames at a temporal ``stride`` from a cached clip, draws a
reference mask with a kept-frame ratio in the stage's ``keep_ratio`` (:func:`sample_reference_mask`), and
computes the stage's loss on the masked frames only:

* ``train: generator``: L_DM = |M v - M G(z_t, Z_uncond, t)|^2, the planner replaced by the null plan;
* ``train: planner``: L_MAR = |M z_low - M f(P(z_low^mask))|^2 through the reconstruction head;
* ``train: joint``: L_MDiff = |M v - M G(z_t, P(z_low^mask), t)|^2, the plan swapped for the null plan
  with probability ``plan_dropout`` (0.1) so guidance on the planning signal works at sampling.

Noise is rectified flow on the masked frames only (``z_t = (1 - s) z + s eps``, ``v = eps - z``, ``s``
logit-normal); known frames stay clean and get timestep 0. Stages are a YAML list; the learning rate is
a cosine with warm-up within each stage. Launch::

    reelkit train mardini --config configs/mardini.yaml
    accelerate launch --multi_gpu --num_processes 2 -m reelkit train mardini --config configs/mardini.yaml

The run checkpoints atomically to ``output_dir/checkpoint`` and resumes from it (mid-stage included),
logs ``output_dir/loss.csv`` (step, stage, loss) and at the end writes the pipeline folder
``output_dir/model`` (planner, generator, scheduler; the image VAE is the bundled one).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from reelkit.errors import ReelkitError
from reelkit.mardini.masking import sample_reference_mask
from reelkit.objectives.masked import masked_mse
from reelkit.train.common import (
    apply_gradients,
    autocast,
    build,
    check_mixed_precision,
    endless,
    load_config,
)
from reelkit.train.recipe import Recipe

TRAINED = ("generator", "planner", "joint")


@dataclass
class Stage:
    """One stage of the progressive schedule."""

    name: str
    steps: int
    train: str  # generator | planner | joint
    keep_ratio: list[float] = field(default_factory=lambda: [0.35, 1.0])  # kept-frame ratio (paper: "mask ratio")
    frames: list[int] = field(default_factory=lambda: [9])  # sub-clip lengths, one drawn per step
    strides: list[int] = field(default_factory=lambda: [1, 2])  # temporal strides, those that fit

    def __post_init__(self):
        if self.train not in TRAINED:
            raise ReelkitError(f"stage {self.name!r}: train must be one of {', '.join(TRAINED)}, got {self.train!r}")
        low, high = self.keep_ratio = [float(r) for r in self.keep_ratio]
        if not 0 < low <= high <= 1:
            raise ReelkitError(f"stage {self.name!r}: keep_ratio must be 0 < low <= high <= 1, got {self.keep_ratio}")
        if self.steps < 1 or min(self.frames) < 2 or min(self.strides) < 1:
            raise ReelkitError(f"stage {self.name!r}: needs steps >= 1, frames >= 2 and strides >= 1")


@dataclass
class MarDiniTrainConfig:
    output_dir: str = "runs/mardini"
    latent_cache: str = "runs/mardini_latents"
    cache_clips: int = 4096
    num_frames: int = 17  # cached clip length; stages cut sub-clips from it
    size: int = 64  # the generator's resolution
    planner_scale: int = 2  # the planner sees size / planner_scale
    photo_fraction: float = 0.3
    image_vae: str | None = None  # None: the bundled image VAE
    planner: dict = field(default_factory=dict)  # MarDiniPlanner options
    generator: dict = field(default_factory=dict)  # MarDiniGenerator options
    stages: list = field(default_factory=list)
    batch_size: int = 16
    learning_rate: float = 5e-4
    warmup_steps: int = 100  # per stage
    min_lr_ratio: float = 0.1
    plan_dropout: float = 0.1
    logit_mean: float = 0.0
    logit_std: float = 1.0
    grad_clip: float = 1.0
    mixed_precision: str = "no"
    save_every: int = 200
    log_every: int = 20
    time_limit_minutes: float | None = None
    seed: int = 0
    threads: int | None = None

    def __post_init__(self):
        check_mixed_precision(self.mixed_precision)
        if not self.stages:
            raise ReelkitError("the config names no stages")
        self.stages = [s if isinstance(s, Stage) else Stage(**s) for s in self.stages]
        for stage in self.stages:
            if max(stage.frames) > self.num_frames:
                raise ReelkitError(f"stage {stage.name!r}: {max(stage.frames)} frames exceed the cached "
                                   f"{self.num_frames}")

    @property
    def max_steps(self) -> int:
        return sum(s.steps for s in self.stages)

    def stage_at(self, step: int) -> tuple[Stage, int]:
        """The stage that step ``step`` (0-based) belongs to, and the step's index within it."""
        for stage in self.stages:
            if step < stage.steps:
                return stage, step
            step -= stage.steps
        return self.stages[-1], self.stages[-1].steps


class MarDini(torch.nn.Module):
    """Planner + generator as one module (one DDP wrapper), its forward the loss of one stage."""

    def __init__(self, planner, generator):
        super().__init__()
        self.planner = planner
        self.generator = generator

    def forward(self, high: torch.Tensor, low: torch.Tensor, reference: torch.Tensor, train: str,
                sigma: torch.Tensor, noise: torch.Tensor, drop_plan: torch.Tensor) -> torch.Tensor:
        generate = ~reference[:, None, :, None, None]  # M: (B, 1, T, 1, 1), true on the frames to make
        if train == "planner":
            reconstruction = self.planner(low, reference, reconstruct=True).reconstruction
            return masked_mse(reconstruction, low, generate)
        plan = None
        if train == "joint":
            plan = self.planner(low, reference).plan
            null = self.generator.unconditional_plan(*plan.shape[:4]).to(plan.dtype)
            plan = torch.where(drop_plan[:, None, None, None, None], null, plan)
        s = sigma[:, None, None, None, None]
        noisy = torch.where(generate, (1 - s) * high + s * noise, high)
        timestep = self.generator.timesteps(sigma * 1000, reference)  # (B, T)
        velocity = self.generator(noisy, timestep, plan, reference).sample
        return masked_mse(velocity, noise - high, generate)


def sub_clips(batch: dict, frames: int, stride: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The same random window of ``frames`` frames at ``stride`` from every clip: (high, low)."""
    total = batch["high"].shape[2]
    span = (frames - 1) * stride + 1
    start = int(torch.randint(total - span + 1, (), generator=generator))
    index = torch.arange(start, start + span, stride)
    return batch["high"][:, :, index], batch["low"][:, :, index]


def stage_lr(config: MarDiniTrainConfig, step: int) -> float:
    """Learning-rate factor at ``step``: linear warm-up, then a cosine to ``min_lr_ratio``, in every stage."""
    stage, local = config.stage_at(step)
    if local < config.warmup_steps:
        return (local + 1) / config.warmup_steps
    progress = (local - config.warmup_steps) / max(1, stage.steps - config.warmup_steps)
    return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def build_models(config: MarDiniTrainConfig):
    """(planner, generator) freshly initialised from the config."""
    from reelkit.mardini import MarDiniGenerator, MarDiniPlanner

    planner = build(MarDiniPlanner, "planner", config.planner)
    plan_dim = planner.config.num_attention_heads * planner.config.attention_head_dim
    generator = build(MarDiniGenerator, "generator", config.generator, plan_dim=plan_dim, sample_size=config.size // 8)
    return planner, generator


class MarDiniRecipe(Recipe):
    """MarDini: per-frame latents at two resolutions cached once; the planner and generator trained through the
    config's progressive stages (one network, or both jointly, a stage), masked flow matching."""

    labels = ("stage",)

    def _kwargs_handlers(self) -> list:
        from accelerate.utils import DistributedDataParallelKwargs

        # stages train one network at a time, so DDP must tolerate parameters without gradients
        return [DistributedDataParallelKwargs(find_unused_parameters=True)]

    def _setup_data(self) -> None:
        from torch.utils.data import DataLoader

        from reelkit.train.frame_latents import FrameLatentCache, build_frame_latent_cache

        config, accelerator = self.config, self.accelerator
        if accelerator.is_main_process:
            from reelkit.vae.image_vae import load_image_vae

            build_frame_latent_cache(config.latent_cache, config.cache_clips, config.num_frames, config.size,
                                     config.planner_scale, config.photo_fraction, vae=load_image_vae(config.image_vae),
                                     progress=lambda n: n % 512 == 0 and accelerator.print(f"latent cache: {n} clips"))
        accelerator.wait_for_everyone()
        self.dataset = FrameLatentCache(config.latent_cache)
        self.loader = DataLoader(self.dataset, batch_size=config.batch_size, shuffle=True, drop_last=True,
                                 generator=torch.Generator().manual_seed(config.seed))

    def _setup_models(self) -> None:
        self.model = MarDini(*build_models(self.config))

    def _setup_optimizer(self) -> None:
        config = self.config
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.learning_rate, betas=(0.9, 0.99),
                                           weight_decay=0.01)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: stage_lr(config, step))

    def _prepare(self) -> None:
        self.model, self.optimizer, self.loader = self.accelerator.prepare(self.model, self.optimizer, self.loader)
        self.accelerator.register_for_checkpointing(self.scheduler)

    def _setup_logs(self) -> None:
        super()._setup_logs()
        config, accelerator = self.config, self.accelerator
        accelerator.print(f"training MarDini on {len(self.dataset)} cached clips, {accelerator.num_processes} "
                          f"process(es), batch {config.batch_size}, stages "
                          f"{', '.join(f'{s.name} ({s.steps})' for s in config.stages)}")
        self.stream = endless(self.loader)

    def train_step(self) -> dict[str, float]:
        config, rng, device = self.config, self.generator, self.accelerator.device
        self.stage, _ = config.stage_at(self.step)
        stage = self.stage
        frames = stage.frames[int(torch.randint(len(stage.frames), (), generator=rng))]
        strides = [s for s in stage.strides if (frames - 1) * s < config.num_frames] or [1]
        stride = strides[int(torch.randint(len(strides), (), generator=rng))]
        high, low = sub_clips(next(self.stream), frames, stride, rng)
        B = high.shape[0]
        reference = sample_reference_mask(B, frames, stage.keep_ratio, rng).to(device)
        sigma = torch.sigmoid(config.logit_mean + config.logit_std * torch.randn(B, generator=rng))
        noise = torch.randn(high.shape, generator=rng)
        drop_plan = torch.rand(B, generator=rng) < config.plan_dropout
        with autocast(config.mixed_precision, device):
            loss = self.model(high, low, reference, stage.train, sigma.to(high.device), noise.to(high.device),
                              drop_plan.to(high.device))
        apply_gradients(self.accelerator, loss, self.model.parameters(), self.optimizer, self.scheduler,
                        config.grad_clip)
        return {"loss": loss.item()}

    def label_values(self) -> tuple[str, ...]:
        return (self.stage.name,)

    def export(self, destination: Path) -> None:
        from reelkit.pipelines.masked_video import save_masked_video_pipeline

        trained = self.accelerator.unwrap_model(self.model)
        save_masked_video_pipeline(trained.planner.eval(), trained.generator.eval(), destination)
        self.accelerator.print(f"wrote {destination}")


def train(config: MarDiniTrainConfig) -> Path:
    """Run the recipe; return the pipeline folder ``output_dir/model``."""
    return MarDiniRecipe(config).run()


def run(config_path: str | Path, **overrides) -> Path:
    return train(load_config(MarDiniTrainConfig, config_path, **overrides))


__all__ = ["MarDini", "MarDiniRecipe", "MarDiniTrainConfig", "Stage", "run", "stage_lr", "sub_clips", "train"]
