"""Recipe: train the text-to-video teacher (``VideoDiT`` + text encoder, jointly) by flow matching.

Data: demo-world clips encoded once by the CV-VAE into a latent cache (built on first use, resumable;
see :mod:`reelkit.train.latent_cache`). Objective: rectified flow, ``x_t = (1 - s) x_0 + s eps`` with
``s`` drawn logit-normal (SD3, Esser et al. 2024), the model predicting the velocity ``eps - x_0``, which
diffusers' ``FlowMatchEulerDiscreteScheduler`` integrates at sampling time. Captions are dropped to the
empty prompt with probability ``caption_dropout`` so classifier-free guidance has an unconditional
model. EMA weights are kept and exported.

Launch::

    reelkit train t2v --config configs/teacher.yaml
    accelerate launch --multi_gpu --num_processes 2 -m reelkit train t2v --config configs/teacher.yaml

The run checkpoints atomically to ``output_dir/checkpoint`` (EMA included) and resumes from it (``init_from``
warm-starts a run whose folder is gone from a pipeline folder, e.g. the committed teacher); it logs
``output_dir/loss.csv`` and redraws ``output_dir/loss.png`` at every checkpoint. With ``eval_every`` it also
judges the EMA weights on held-out prompts (``adherence.csv``, ``adherence.png``, see
:mod:`reelkit.train.monitor`) and keeps the best-reading pipeline in ``output_dir/best``. At the end it writes the
pipeline folder ``output_dir/model`` (transformer, text encoder, tokenizer, scheduler; the CV-VAE is the
bundled one).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from reelkit.data.world import SHAPES
from reelkit.errors import ReelkitError
from reelkit.loading import save_pipeline_without_vae
from reelkit.objectives.flow_matching import flow_matching_loss
from reelkit.train.common import (
    apply_gradients,
    architecture_differences,
    autocast,
    build,
    check_mixed_precision,
    endless,
    load_config,
)
from reelkit.train.recipe import Recipe
from reelkit.train.representation import DEFAULT_ENCODER, RepresentationAlignment


@dataclass
class T2VTrainConfig:
    output_dir: str = "runs/teacher"
    latent_cache: str = "runs/t2v_latents"
    cache_clips: int = 8192  # clips to encode into the cache if it is missing or incomplete
    cache_workers: int = 0  # processes that render the cache's clips (a GPU machine encodes faster than 1 renders)
    num_frames: int = 17
    size: int = 64
    vae: str | None = None  # the CV-VAE that encoded the cache (None: bundled); gives the scaling factor
    model: dict = field(default_factory=dict)  # VideoDiT options
    text_encoder: dict = field(default_factory=dict)  # WorldTextEncoder options
    batch_size: int = 64
    learning_rate: float = 3e-4
    warmup_steps: int = 200
    max_steps: int = 3000
    time_limit_minutes: float | None = None
    ema_decay: float = 0.999
    caption_dropout: float = 0.1
    logit_mean: float = 0.0
    logit_std: float = 1.0
    object_weight: float = 0.0  # > 0: the loss weighs latent pixels on the objects (1 + this) x the background
    object_weight_steps: int | None = None  # weigh only the first N steps: the weighting speeds up learning
    # the objects but biases the model towards drawing them (a second, unasked object), so it ends early
    object_weight_max_sigma: float | None = None  # weigh only samples noised below this level (and at or above
    object_weight_min_sigma: float = 0.0  # this one): where the noisy input already fixes the layout, the weight
    # stresses the objects' look without adding objects
    twin_clips: int = 0  # > 0: also encode the shape twins of the first N clips (same scene, other shapes) and
    twin_cache: str = "runs/t2v_twins"  # train on twin_pairs of them a step, each pair with one noise: the pair
    twin_pairs: int = 16  # differs only in its shape words and shapes, which teaches the model to read them
    shape_probe: float = 0.0  # > 0: a linear probe on the last block's features, pooled over the object of each
    shape_probe_min_sigma: float = 0.5  # captioned one-object clip noised to at least this level, must name its
    # shape (cross-entropy, this weight): where the noise hides the shape, the features must take it from the words
    repa: float = 0.0  # > 0: representation alignment (REPA) of block repa_block's output with repa_encoder's
    repa_block: int = 2  # features of the clean clip, this weight (reelkit.train.representation)
    repa_encoder: str = DEFAULT_ENCODER
    contrastive: float = 0.0  # > 0: contrastive flow matching (Delta-FM, Stoica et al. 2025), this weight
    grad_clip: float = 1.0
    gradient_checkpointing: bool = False
    mixed_precision: str = "no"  # "bf16": autocast (see reelkit.train.common.autocast)
    compile: bool = False  # torch.compile the transformer in place (keys unchanged): 1.3x a step on a CPU core for
    # the teacher, after a one-off compile of a few minutes; for long runs
    save_every: int = 200
    log_every: int = 20
    eval_every: int = 0  # > 0: every N steps, judge-read adherence on held-out prompts (adherence.csv/.png)
    eval_prompts: int = 16
    eval_steps: int = 25
    eval_guidance: float = 5.0
    init_from: str | None = None  # a text-to-video pipeline folder to warm-start from (when no checkpoint)
    seed: int = 0
    threads: int | None = None

    def __post_init__(self):
        check_mixed_precision(self.mixed_precision)
        if not 0 <= self.object_weight <= 1000:
            raise ReelkitError(f"object_weight must lie in 0 .. 1000 (0: off), got {self.object_weight}")
        if self.object_weight_max_sigma is not None and not (
                0 <= self.object_weight_min_sigma < self.object_weight_max_sigma <= 1):
            raise ReelkitError(f"object_weight_max_sigma must lie in (0, 1] (null: every noise level), above "
                               f"object_weight_min_sigma; got {self.object_weight_min_sigma} .. "
                               f"{self.object_weight_max_sigma}")
        if self.object_weight_steps is not None and self.object_weight_steps < 0:
            raise ReelkitError(f"object_weight_steps must be >= 0 (null: every step), got {self.object_weight_steps}")
        if not 0 <= self.shape_probe <= 100 or not 0 <= self.shape_probe_min_sigma < 1:
            raise ReelkitError(f"shape_probe must lie in 0 .. 100 (0: off) and shape_probe_min_sigma in [0, 1); got "
                               f"{self.shape_probe}, {self.shape_probe_min_sigma}")
        if not 0 <= self.contrastive < 1:
            raise ReelkitError(f"contrastive must lie in [0, 1) (0: off), got {self.contrastive}")
        if not 0 <= self.repa <= 100 or self.repa_block < 0:
            raise ReelkitError(f"repa must lie in 0 .. 100 (0: off) and repa_block be >= 0; got {self.repa}, "
                               f"{self.repa_block}")
        if self.twin_clips and (self.twin_clips > self.cache_clips or self.twin_pairs < 1 or self.object_weight):
            raise ReelkitError("twin_clips must lie in 1 .. cache_clips, with twin_pairs >= 1 and no object_weight")
        if self.cache_workers < 0:
            raise ReelkitError(f"cache_workers must be >= 0 (0: render in the main process), got {self.cache_workers}")
        if self.eval_every < 0 or not 1 <= self.eval_prompts <= 512 or self.eval_steps < 1:
            raise ReelkitError("eval_every must be >= 0 (0: off), eval_prompts in 1..512, eval_steps >= 1")


class Denoiser(torch.nn.Module):
    """Text encoder + transformer as one module, so one DDP wrapper trains both."""

    def __init__(self, transformer, text_encoder, shape_probe: bool = False, repa_block: int | None = None,
                 repa_dim: int = 0):
        super().__init__()
        self.transformer = transformer
        self.text_encoder = text_encoder
        dim = transformer.proj_out.in_features
        # the shape probe reads the last block's features (B, T*S, D), REPA's projector block repa_block's; both
        # train with the model and are never exported
        self.shape_probe = torch.nn.Linear(dim, len(SHAPES)) if shape_probe else None
        self.alignment = RepresentationAlignment(dim, repa_dim) if repa_block is not None else None
        self.repa_block = repa_block
        self.features, self.repa_features = None, None

    def forward(self, noisy: torch.Tensor, timestep: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor) -> torch.Tensor:
        text = self.text_encoder(input_ids, attention_mask)
        blocks = self.transformer.transformer_blocks
        handles = []
        if self.shape_probe is not None:
            handles.append(blocks[-1].register_forward_hook(lambda m, a, output: setattr(self, "features", output)))
        if self.alignment is not None:
            handles.append(blocks[self.repa_block].register_forward_hook(
                lambda m, a, output: setattr(self, "repa_features", output)))
        try:
            return self.transformer(noisy, timestep, text).sample
        finally:
            for handle in handles:
                handle.remove()

    def alignment_loss(self, targets: torch.Tensor, latent_shape: torch.Size) -> torch.Tensor:
        """REPA's loss for the first ``len(targets)`` samples of the last forward pass (latents ``latent_shape``)."""
        p = self.transformer.config.patch_size
        grid = (latent_shape[2], latent_shape[3] // p, latent_shape[4] // p)
        return self.alignment(self.repa_features, targets, grid)

    def shape_probe_loss(self, coverage: torch.Tensor, shapes: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the probe on the object-pooled features of the samples ``keep`` marks; ``coverage``
        is (B, T, H, W) at latent resolution, ``shapes`` (B,) class indices."""
        features = self.features[:len(coverage)].float()  # (B, T*S, D)
        p = self.transformer.config.patch_size
        on_tokens = F.avg_pool2d(coverage.flatten(0, 1)[:, None].to(features), p).view(len(coverage), -1)  # (B, T*S)
        pooled = (on_tokens[..., None] * features).sum(1) / on_tokens.sum(1, keepdim=True).clamp_min(1e-6)
        if not keep.any():
            return features.sum() * 0.0
        return F.cross_entropy(self.shape_probe(pooled[keep]), shapes[keep])


def plot_losses(csv_path: Path, png_path: Path) -> None:
    """Redraw the loss curve (raw and smoothed) from ``loss.csv``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [line.split(",") for line in csv_path.read_text().splitlines()[1:] if line]
    if not rows:
        return
    steps = [int(r[0]) for r in rows]
    losses = [float(r[1]) for r in rows]
    smooth, value = [], losses[0]
    for loss in losses:
        value = 0.9 * value + 0.1 * loss
        smooth.append(value)
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(steps, losses, alpha=0.3, label="loss")
    ax.plot(steps, smooth, label="smoothed")
    ax.set_xlabel("step")
    ax.set_ylabel("flow-matching loss")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path)
    plt.close(fig)


def build_components(config: T2VTrainConfig, spatial_compression: int = 8):
    """(transformer, text encoder, tokenizer) freshly initialised from the config, the transformer laid out
    for latents of ``size // spatial_compression``; with ``init_from``, the weights of that pipeline (its
    architecture must be the config's)."""
    from reelkit.models.dit import VideoDiT
    from reelkit.models.text import WorldTextEncoder, build_tokenizer

    tokenizer = build_tokenizer()
    text_encoder = build(WorldTextEncoder, "text_encoder", config.text_encoder, vocab_size=len(tokenizer))
    transformer = build(VideoDiT, "model", config.model, text_dim=text_encoder.config.dim,
                        sample_size=config.size // spatial_compression)
    if config.init_from is not None:
        transformer, text_encoder = _warm_start(config.init_from, transformer, text_encoder)
    return transformer, text_encoder, tokenizer


# VideoDiT options whose new layers start at zero, so a warm start may add them: option -> its parameters
ADDED_AT_ZERO = {"pooled_text": ("text_pool.",), "refine_channels": ("proj_extra.", "refine.")}


def _warm_start(path: str, transformer, text_encoder):
    """The transformer and text encoder of the pipeline at ``path``, checked against the fresh ones. A config may
    add the pooled-text modulation or the convolutional refiner to a model without them: the fresh model takes
    the loaded weights and keeps its zero-initialised additions, so it starts as the loaded model."""
    from reelkit.pipelines.text_to_video import load_text_to_video

    pipe = load_text_to_video(path)
    added = [option for option in ADDED_AT_ZERO
             if transformer.config.get(option) and not pipe.transformer.config.get(option)]
    for name, fresh, loaded in (("transformer", transformer, pipe.transformer),
                                ("text_encoder", text_encoder, pipe.text_encoder)):
        shown = architecture_differences(fresh, loaded, ignore=tuple(added) if name == "transformer" else ())
        if shown:
            raise ReelkitError(f"init_from {path}: its {name} does not match the config ({shown})")
    if added:
        missing, unexpected = transformer.load_state_dict(pipe.transformer.float().state_dict(), strict=False)
        prefixes = tuple(prefix for option in added for prefix in ADDED_AT_ZERO[option])
        assert not unexpected and all(key.startswith(prefixes) for key in missing), (missing, unexpected)
        return transformer.train(), pipe.text_encoder.float().train()
    return pipe.transformer.float().train(), pipe.text_encoder.float().train()


class T2VRecipe(Recipe):
    """The teacher: a latent cache built once, the denoiser (transformer + text encoder) with EMA, flow matching."""

    def _setup_data(self) -> None:
        from torch.utils.data import DataLoader

        from reelkit.train.latent_cache import LatentCache, TwinPairs, add_coverage, build_latent_cache
        from reelkit.train.representation import add_representation_targets
        from reelkit.vae import load_cvvae

        config, accelerator = self.config, self.accelerator
        self.vae = load_cvvae(config.vae).to(accelerator.device)  # encodes the cache; the monitor decodes with it
        if accelerator.is_main_process:
            build_latent_cache(config.latent_cache, config.cache_clips, config.num_frames, config.size, vae=self.vae,
                               progress=lambda n: n % 1024 == 0 and accelerator.print(f"latent cache: {n} clips"),
                               workers=config.cache_workers)
            if config.object_weight > 0 or config.shape_probe > 0:
                add_coverage(config.latent_cache)
            if config.repa > 0:
                accelerator.print("REPA targets: reading the cache's clips with " + config.repa_encoder)
                add_representation_targets(config.latent_cache, config.repa_encoder)
            if config.twin_clips:
                build_latent_cache(config.twin_cache, config.twin_clips, config.num_frames, config.size, vae=self.vae,
                                   shape_twins=True,
                                   progress=lambda n: n % 1024 == 0 and accelerator.print(f"shape twins: {n} clips"))
        accelerator.wait_for_everyone()
        self.dataset = LatentCache(config.latent_cache)
        self.loader = DataLoader(self.dataset, batch_size=config.batch_size, shuffle=True, drop_last=True,
                                 num_workers=0, generator=torch.Generator().manual_seed(config.seed))
        self.pair_loader = None
        if config.twin_clips:
            self.pair_loader = DataLoader(TwinPairs(self.dataset, LatentCache(config.twin_cache)),
                                          batch_size=config.twin_pairs, shuffle=True, drop_last=True, num_workers=0,
                                          generator=torch.Generator().manual_seed(config.seed + 1))

    def _setup_models(self) -> None:
        from diffusers.training_utils import EMAModel

        transformer, text_encoder, self.tokenizer = build_components(self.config, self.vae.spatial_compression)
        if self.config.gradient_checkpointing:
            transformer.enable_gradient_checkpointing()
        if self.config.compile:
            transformer.compile()  # nn.Module.compile: in place, so checkpoints and exports keep their keys
        repa = self.config.repa > 0
        if repa and not (0 <= self.config.repa_block < len(transformer.transformer_blocks)):
            raise ReelkitError(f"repa_block must name one of the model's {len(transformer.transformer_blocks)} "
                               f"blocks (0-based), got {self.config.repa_block}")
        if repa and "repa" not in self.dataset.tensors:
            raise ReelkitError(f"{self.config.latent_cache}: the latent cache has no REPA targets")
        self.denoiser = Denoiser(transformer, text_encoder, shape_probe=self.config.shape_probe > 0,
                                 repa_block=self.config.repa_block if repa else None,
                                 repa_dim=self.dataset.tensors["repa"].shape[2] if repa else 0)
        self.figures = ("loss",) + (("shape_probe",) if self.config.shape_probe > 0 else ()) + (
            ("repa",) if repa else ())
        self.ema = EMAModel(self.denoiser.parameters(), decay=self.config.ema_decay)

    def _setup_optimizer(self) -> None:
        from diffusers.optimization import get_cosine_schedule_with_warmup

        config = self.config
        self.optimizer = torch.optim.AdamW(self.denoiser.parameters(), lr=config.learning_rate, betas=(0.9, 0.99),
                                           weight_decay=0.01)
        self.scheduler = get_cosine_schedule_with_warmup(self.optimizer, config.warmup_steps, config.max_steps)

    def _prepare(self) -> None:
        accelerator = self.accelerator
        self.denoiser, self.optimizer, self.loader = accelerator.prepare(self.denoiser, self.optimizer, self.loader)
        accelerator.register_for_checkpointing(self.scheduler)
        accelerator.register_for_checkpointing(self.ema)

    def _setup_logs(self) -> None:
        super()._setup_logs()
        accelerator, config = self.accelerator, self.config
        accelerator.print(f"training the teacher on {len(self.dataset)} cached clips, {accelerator.num_processes} "
                          f"process(es), batch {config.batch_size} per process")
        self.ema.to(accelerator.device)
        self.stream = endless(self.loader)
        self.pairs = endless(self.pair_loader) if self.pair_loader is not None else None
        self.monitor = None
        if config.eval_every and accelerator.is_main_process:
            from reelkit.models.judge import load_judge
            from reelkit.train.monitor import AdherenceMonitor

            self.monitor = AdherenceMonitor(self.output_dir, load_judge().to(accelerator.device), config.eval_prompts,
                                            config.num_frames, config.size, config.eval_steps, config.eval_guidance,
                                            resume_step=self.step)

    def train_step(self) -> dict[str, float]:
        from reelkit.models.text import tokenize_prompts

        config, accelerator, generator = self.config, self.accelerator, self.generator
        batch = next(self.stream)
        captions = [c if torch.rand((), generator=generator) >= config.caption_dropout else ""
                    for c in batch["caption"]]
        latents = batch["latent"]
        paired = 0
        if self.pairs is not None:  # (B + 2P): the batch, then P clips, then their P shape twins
            pairs = next(self.pairs)
            paired = len(pairs["caption"])
            latents = torch.cat([latents, pairs["latent"], pairs["twin_latent"]])
            captions += list(pairs["caption"]) + list(pairs["twin_caption"])
        tokens = {k: v.to(accelerator.device) for k, v in tokenize_prompts(captions, self.tokenizer).items()}
        latents = latents.to(accelerator.device) * self.vae.config.scaling_factor
        weight = None
        weighted = config.object_weight > 0 and (config.object_weight_steps is None
                                                 or self.step < config.object_weight_steps)
        if weighted:  # (B, 1, 1+k, h, w): the objects weigh more than the background
            weight = 1 + config.object_weight * batch["coverage"][:, None].to(accelerator.device)
        sigmas: list = []
        with autocast(config.mixed_precision, accelerator.device):
            loss = flow_matching_loss(self.denoiser, latents, tokens, generator, config.logit_mean, config.logit_std,
                                      weight, None if config.object_weight_max_sigma is None else
                                      (config.object_weight_min_sigma, config.object_weight_max_sigma), paired,
                                      sigmas_out=sigmas, contrastive=config.contrastive)
        figures = {"loss": loss.item()}
        if config.shape_probe > 0:
            B = len(batch["caption"])
            keep = ((batch["num_objects"] == 1) & torch.tensor([c != "" for c in captions[:B]])).to(sigmas[0].device)
            keep &= sigmas[0][:B] >= config.shape_probe_min_sigma
            probe = accelerator.unwrap_model(self.denoiser).shape_probe_loss(
                batch["coverage"].to(accelerator.device), batch["shape"][:, 0].to(accelerator.device), keep)
            loss = loss + config.shape_probe * probe
            figures["shape_probe"] = probe.item()
        if config.repa > 0:
            alignment = accelerator.unwrap_model(self.denoiser).alignment_loss(
                batch["repa"].to(accelerator.device), latents.shape)
            loss = loss + config.repa * alignment
            figures["repa"] = alignment.item()
        apply_gradients(accelerator, loss, self.denoiser.parameters(), self.optimizer, self.scheduler,
                        config.grad_clip)
        self.ema.step(accelerator.unwrap_model(self.denoiser).parameters())
        return figures

    def after_step(self) -> None:
        if self.monitor is not None and (self.step % self.config.eval_every == 0 or self.step == self.config.max_steps):
            _evaluate(self.monitor, self.accelerator.unwrap_model(self.denoiser), self.ema, self.vae, self.tokenizer,
                      self.output_dir, self.step, self.accelerator.print)

    def on_checkpoint(self) -> None:
        plot_losses(self.csv_path, self.output_dir / "loss.png")

    def export(self, destination: Path) -> None:
        from reelkit.pipelines.text_to_video import TextToVideoPipeline, default_scheduler

        trained = self.accelerator.unwrap_model(self.denoiser)
        self.ema.copy_to(trained.parameters())
        pipe = TextToVideoPipeline(trained.transformer.eval(), self.vae, trained.text_encoder.eval(), self.tokenizer,
                                   default_scheduler())
        save_pipeline_without_vae(pipe, destination)
        self.accelerator.print(f"wrote {destination} (EMA weights; loss curve {self.output_dir / 'loss.png'})")


def train(config: T2VTrainConfig) -> Path:
    """Run the recipe; return the pipeline folder ``output_dir/model``."""
    return T2VRecipe(config).run()


def _evaluate(monitor, denoiser, ema, vae, tokenizer, output_dir: Path, step: int, say) -> None:
    """Judge the EMA weights on held-out prompts; export them to ``output_dir/best`` when they read best."""
    from reelkit.pipelines.text_to_video import TextToVideoPipeline, default_scheduler

    parameters = list(denoiser.parameters())
    ema.store(parameters)
    ema.copy_to(parameters)
    try:
        denoiser.eval()
        pipe = TextToVideoPipeline(denoiser.transformer, vae, denoiser.text_encoder, tokenizer, default_scheduler())
        scores, best = monitor.evaluate(pipe, step)
        if best:
            save_pipeline_without_vae(pipe, output_dir / "best")
    finally:
        denoiser.train()
        ema.restore(parameters)
    say(f"step {step} adherence " + " ".join(f"{k} {v:.3f}" for k, v in scores.items())
        + (f" (best so far: {output_dir / 'best'})" if best else ""), flush=True)


def run(config_path: str | Path, **overrides) -> Path:
    return train(load_config(T2VTrainConfig, config_path, **overrides))


__all__ = ["Denoiser", "T2VRecipe", "T2VTrainConfig", "run", "train"]
