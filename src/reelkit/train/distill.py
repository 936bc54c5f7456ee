"""Recipe: T2V-Turbo, a few-step student by latent consistency distillation with mixed reward feedback.

The student is the teacher's ``VideoDiT`` plus a guidance embedding (``guidance_embed=True``, zero at
start, trained in full and saved with the weights: the official code leaves it random and unsaved), with
LoRA adapters (peft, through diffusers' ``add_adapter``) merged into the weights at export. One step
(Li et al. 2024, T2V-Turbo, Algorithm 1, in flow-matching form):

1. draw ``n`` on the teacher's ``N``-level solver grid and noise the data to ``sigma_n``;
2. the student's single-step estimate ``f(x_n) = x_n - sigma_n v_student(x_n, w)`` (the consistency
   function of a flow-matching model: it equals ``x`` at ``sigma = 0``, the boundary condition, exactly);
3. the teacher's CFG-augmented ODE solver takes one Euler step (DDIM for flow matching) over the skipping
   interval, ``k`` grid levels, with the guidance ``w ~ U[guidance_min, guidance_max]`` drawn per sample,
   to ``x_{n+k}``;
4. ``L_CD = d(f(x_n), f_target(x_{n+k}))``, pseudo-Huber (or L2); the target is the online student
   under no-grad (``target: online``, the released trainer) or an EMA of it (``target: ema``, Algorithm 1);
5. the rewards: ``f(x_n)`` decoded through the CV-VAE with gradients; the image reward on M sampled
   frames and the video reward on the clip; ``L = L_CD - beta_img J_img - beta_vid J_vid``.

Which process computes which term is set by ``cd_processes``, ``image_reward_processes`` and
``video_reward_processes`` (rank lists; ``null``: every process); accelerate averages the gradients,
so the effective objective is the per-process mix (the paper's 8-GPU split is ``[0..5]`` / ``[0..5]`` /
``[6, 7]``).

Launch::

    reelkit train distill --config configs/turbo.yaml
    accelerate launch --multi_gpu --num_processes 2 -m reelkit train distill --config configs/turbo.yaml

In Python, the pieces (a tiny random teacher here)::

>>> import torch
>>> from reelkit.pipelines.text_to_video import tiny_pipeline
>>> from reelkit.objectives.consistency import consistency_estimate
>>> from reelkit.train.distill import DistillConfig, build_student
>>> teacher = tiny_pipeline().transformer
>>> student, trainable = build_student(teacher, DistillConfig(lora_rank=4))   # LoRA + guidance embedding
>>> x_t, sigma, text = torch.randn(2, 8, 2, 4, 4), torch.tensor([0.9, 0.3]), torch.randn(2, 24, 16)
>>> consistency_estimate(student, x_t, sigma, text, guidance=torch.tensor([5.0, 5.0])).shape
torch.Size([2, 8, 2, 4, 4])

The run checkpoints atomically to ``output_dir/checkpoint`` and resumes from it, logs
``output_dir/loss.csv``, and at the end writes the student pipeline folder ``output_dir/model``
(merged transformer, the teacher's text encoder and tokenizer, diffusers' ``FlowMatchLCMScheduler``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from reelkit.errors import ReelkitError
from reelkit.loading import save_pipeline_without_vae
from reelkit.objectives.consistency import consistency_estimate, pseudo_huber, solver_grid, teacher_solver_step
from reelkit.train.common import (
    apply_gradients,
    autocast,
    check_mixed_precision,
    endless,
    load_config,
)
from reelkit.train.recipe import Recipe

LOSSES = ("huber", "l2")
TARGETS = ("online", "ema")


@dataclass
class DistillConfig:
    output_dir: str = "runs/turbo"
    teacher: str | None = None  # a text-to-video pipeline folder; None: the bundled teacher
    latent_cache: str = "runs/t2v_latents"
    cache_clips: int = 4096  # clips to encode into the cache if it is missing or incomplete
    num_frames: int = 17
    size: int = 64
    # the teacher's solver: N grid levels, one solver step jumps k of them (the paper: 50 DDIM levels,
    # topk 20 of 1000 = 1 level; a larger k propagates the boundary condition in fewer hops)
    num_ddim_timesteps: int = 50
    skip_steps: int = 1
    guidance_min: float = 2.0  # w ~ U[min, max], per sample (classifier-free guidance scale, 1 = none)
    guidance_max: float = 8.0
    loss: str = "huber"
    huber_c: float = 0.001
    target: str = "online"
    ema_decay: float = 0.95
    lora_rank: int = 64  # 0 trains every weight instead
    lora_alpha: float | None = None  # None: the rank
    lora_dropout: float = 0.1
    image_reward: str | None = "demo-image"  # a reward name or folder (reelkit.rewards.load_reward)
    video_reward: str | None = "demo-video"
    beta_img: float = 1.0
    beta_vid: float = 2.0
    reward_frames: int = 5  # M, frames the image reward scores per clip
    reward_batch_size: int = 2  # clips per process decoded for the rewards
    cd_processes: list[int] | None = None
    image_reward_processes: list[int] | None = None
    video_reward_processes: list[int] | None = None
    batch_size: int = 24
    learning_rate: float = 2e-4
    max_steps: int = 400
    time_limit_minutes: float | None = None
    grad_clip: float = 1.0
    mixed_precision: str = "no"
    save_every: int = 50
    log_every: int = 10
    seed: int = 0
    threads: int | None = None

    def __post_init__(self):
        check_mixed_precision(self.mixed_precision)
        if self.loss not in LOSSES:
            raise ReelkitError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.target not in TARGETS:
            raise ReelkitError(f"target must be one of {', '.join(TARGETS)}, got {self.target!r}")
        if not 1 <= self.guidance_min <= self.guidance_max:
            raise ReelkitError(f"need 1 <= guidance_min <= guidance_max, got {self.guidance_min}, {self.guidance_max}")
        if not 1 <= self.skip_steps < self.num_ddim_timesteps:
            raise ReelkitError(f"skip_steps must be in [1, num_ddim_timesteps), got {self.skip_steps}")
        if self.lora_rank < 0 or self.reward_batch_size < 1 or self.reward_frames < 1:
            raise ReelkitError("lora_rank must be >= 0, reward_batch_size and reward_frames >= 1")
        for name in ("beta_img", "beta_vid"):
            if getattr(self, name) < 0:
                raise ReelkitError(f"{name} must be >= 0 (a reward weight), got {getattr(self, name)}")


class ProcessRoles:
    """Which terms of the objective this process computes (rank lists from the config; None: all)."""

    def __init__(self, config: DistillConfig, rank: int, num_processes: int):
        def member(ranks: list[int] | None, name: str) -> bool:
            if ranks is None:
                return True
            bad = [r for r in ranks if not 0 <= int(r) < num_processes]
            if bad:
                raise ReelkitError(f"{name} names ranks {bad}, but there are {num_processes} process(es)")
            return rank in ranks

        self.cd = member(config.cd_processes, "cd_processes")
        self.image = config.beta_img > 0 and config.image_reward is not None and member(
            config.image_reward_processes, "image_reward_processes")
        self.video = config.beta_vid > 0 and config.video_reward is not None and member(
            config.video_reward_processes, "video_reward_processes")
        if not (self.cd or self.image or self.video):
            raise ReelkitError(f"process {rank} computes no term of the objective; check the *_processes lists")

    def __str__(self) -> str:
        return ", ".join(term for term, on in (("CD", self.cd), ("image reward", self.image),
                                               ("video reward", self.video)) if on)


def build_student(teacher, config: DistillConfig):
    """The teacher's transformer with a (zero) guidance embedding and, if asked, LoRA adapters; returns it
    with its trainable parameters (LoRA + guidance embedding, or everything)."""
    from reelkit.models.dit import VideoDiT

    options = {k: v for k, v in teacher.config.items() if not k.startswith("_")}  # not "_use_default_values"
    student = VideoDiT.from_config({**options, "guidance_embed": True})
    missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
    if unexpected or any("cond_proj" not in name for name in missing):
        raise ReelkitError(f"the teacher's weights do not fit a student (missing {missing}, unexpected {unexpected})")
    if config.lora_rank == 0:
        return student, list(student.parameters())
    from peft import LoraConfig

    targets = [name for name, module in student.named_modules()
               if isinstance(module, torch.nn.Linear) and "cond_proj" not in name]
    student.add_adapter(LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha or config.lora_rank,
                                   lora_dropout=config.lora_dropout, init_lora_weights="gaussian",
                                   target_modules=targets))
    student.time_embedding.cond_proj.weight.requires_grad_(True)
    return student, [p for p in student.parameters() if p.requires_grad]


def export_student(student, teacher_pipe, destination: Path) -> Path:
    """Merge the LoRA into the weights and save the student pipeline folder atomically."""
    from reelkit.pipelines.text_to_video import TextToVideoPipeline, consistency_scheduler

    if getattr(student, "peft_config", None):
        student.fuse_lora()
        student.unload_lora()
    shift = teacher_pipe.scheduler.config.get("shift", 1.0)
    pipe = TextToVideoPipeline(student.eval(), teacher_pipe.vae, teacher_pipe.text_encoder, teacher_pipe.tokenizer,
                               consistency_scheduler(shift))
    return save_pipeline_without_vae(pipe, destination)


class DistillRecipe(Recipe):
    """T2V-Turbo: a LoRA student distilled from the frozen teacher by consistency distillation, with the demo
    image-text and video-text rewards (each process computes the terms its :class:`ProcessRoles` give it)."""

    figures = ("loss_cd", "reward_image", "reward_video")
    log_lr = False

    def _setup_data(self) -> None:
        from torch.utils.data import DataLoader

        from reelkit.pipelines.text_to_video import load_text_to_video
        from reelkit.train.latent_cache import LatentCache, build_latent_cache

        config, accelerator = self.config, self.accelerator
        self.roles = ProcessRoles(config, accelerator.process_index, accelerator.num_processes)
        self.teacher_pipe = load_text_to_video(config.teacher)
        self.vae, self.text_encoder, self.tokenizer = (self.teacher_pipe.vae, self.teacher_pipe.text_encoder,
                                                       self.teacher_pipe.tokenizer)
        for model in (self.teacher_pipe.transformer, self.vae, self.text_encoder):
            model.requires_grad_(False)
        if accelerator.is_main_process:
            build_latent_cache(config.latent_cache, config.cache_clips, config.num_frames, config.size, vae=self.vae,
                               progress=lambda n: n % 1024 == 0 and accelerator.print(f"latent cache: {n} clips"))
        accelerator.wait_for_everyone()
        self.dataset = LatentCache(config.latent_cache)
        self.loader = DataLoader(self.dataset, batch_size=config.batch_size, shuffle=True, drop_last=True,
                                 num_workers=0, generator=torch.Generator().manual_seed(config.seed))

    def _setup_models(self) -> None:
        from diffusers.training_utils import EMAModel

        from reelkit.rewards import load_reward

        config, roles = self.config, self.roles
        self.image_reward = (load_reward(config.image_reward, num_sampled_frames=config.reward_frames)
                             if roles.image else None)
        self.video_reward = load_reward(config.video_reward) if roles.video else None
        self.teacher = self.teacher_pipe.transformer if roles.cd else None
        self.student, self.trainable = build_student(self.teacher_pipe.transformer, config)
        self.student.train()
        self.ema = EMAModel(self.trainable, decay=config.ema_decay) if config.target == "ema" else None

    def _setup_optimizer(self) -> None:
        self.optimizer = torch.optim.AdamW(self.trainable, lr=self.config.learning_rate, betas=(0.9, 0.999),
                                           weight_decay=0.0)

    def _prepare(self) -> None:
        accelerator = self.accelerator
        self.student, self.optimizer, self.loader = accelerator.prepare(self.student, self.optimizer, self.loader)
        if self.ema is not None:
            accelerator.register_for_checkpointing(self.ema)

    def _setup_logs(self) -> None:
        from reelkit.models.text import encode_prompts

        super()._setup_logs()
        config, accelerator = self.config, self.accelerator
        device = accelerator.device
        if self.ema is not None:
            self.ema.to(device)
        for model in (self.teacher_pipe.transformer, self.vae, self.text_encoder):
            model.to(device)
        self.grid = solver_grid(self.teacher_pipe.scheduler.config, config.num_ddim_timesteps).to(device)  # (N + 1,)
        with torch.no_grad():
            self.uncond_text = encode_prompts([""], self.tokenizer, self.text_encoder)
        accelerator.print(f"distilling a student from {config.teacher or 'the bundled teacher'} on "
                          f"{len(self.dataset)} cached clips, {accelerator.num_processes} process(es); this one "
                          f"computes {self.roles}")
        self.stream = endless(self.loader)
        self.unwrapped = accelerator.unwrap_model(self.student)

    def train_step(self) -> dict[str, float]:
        from reelkit.models.text import encode_prompts

        config, roles, generator = self.config, self.roles, self.generator
        device, scaling_factor, ema, trainable = self.accelerator.device, self.vae.config.scaling_factor, self.ema, \
            self.trainable
        batch = next(self.stream)
        batch_size = config.batch_size if roles.cd else config.reward_batch_size
        prompts = list(batch["caption"])[:batch_size]
        latents = batch["latent"][:batch_size].to(device) * scaling_factor  # (B, C, T, h, w)
        with torch.no_grad():
            text = encode_prompts(prompts, self.tokenizer, self.text_encoder)
        index = torch.randint(0, config.num_ddim_timesteps, (batch_size,), generator=generator).to(device)
        sigma = self.grid[index]
        sigma_next = self.grid[(index + config.skip_steps).clamp(max=config.num_ddim_timesteps)]
        guidance = (config.guidance_min + (config.guidance_max - config.guidance_min)
                    * torch.rand(batch_size, generator=generator)).to(device)
        noise = torch.randn(latents.shape, generator=generator).to(device)
        x_t = (1 - sigma.view(-1, 1, 1, 1, 1)) * latents + sigma.view(-1, 1, 1, 1, 1) * noise
        terms = torch.zeros(3)
        with autocast(config.mixed_precision, device):
            estimate = consistency_estimate(self.student, x_t, sigma, text, guidance)  # (B, C, T, h, w), has grad
            loss = estimate.new_zeros(())
            if roles.cd:
                x_next = teacher_solver_step(self.teacher, x_t.float(), sigma, sigma_next, text,
                                             self.uncond_text.expand_as(text), guidance)  # k levels in one step
                with torch.no_grad():
                    if ema is not None:
                        ema.store(trainable)
                        ema.copy_to(trainable)
                    target = consistency_estimate(self.unwrapped, x_next, sigma_next, text, guidance)
                    if ema is not None:
                        ema.restore(trainable)
                loss_cd = (pseudo_huber(estimate, target, config.huber_c) if config.loss == "huber"
                           else torch.nn.functional.mse_loss(estimate.float(), target.float()))
                loss = loss + loss_cd
                terms[0] = loss_cd.detach().float()
            if roles.image or roles.video:
                count = min(config.reward_batch_size, batch_size)
                video = self.vae.decode(estimate[:count] / scaling_factor).sample.float()  # (b, 3, T, H, W), has grad
                if roles.image:
                    reward_image = self.image_reward.score(video, prompts[:count], generator).mean()
                    loss = loss - config.beta_img * reward_image
                    terms[1] = reward_image.detach().float()
                if roles.video:
                    reward_video = self.video_reward.score(video, prompts[:count], generator).mean()
                    loss = loss - config.beta_vid * reward_video
                    terms[2] = reward_video.detach().float()
        apply_gradients(self.accelerator, loss, trainable, self.optimizer, None, config.grad_clip)
        if ema is not None:
            ema.step(trainable)
        return dict(zip(self.figures, terms.tolist(), strict=True))

    def export(self, destination: Path) -> None:
        if self.ema is not None:
            self.ema.copy_to(self.trainable)
        export_student(self.accelerator.unwrap_model(self.student), self.teacher_pipe, destination)
        self.accelerator.print(f"wrote {destination} (LoRA merged; sample it in 1-8 steps)")


def train(config: DistillConfig) -> Path:
    """Run the recipe; return the student pipeline folder ``output_dir/model``."""
    return DistillRecipe(config).run()


def run(config_path: str | Path, **overrides) -> Path:
    return train(load_config(DistillConfig, config_path, **overrides))


__all__ = ["DistillConfig", "DistillRecipe", "build_student", "export_student", "run", "train"]
