"""Recipe: one rung of the teacher ladder (issue 36), a text-conditioned U-Net denoiser on a slice of the world.

The teacher draws the asked colours but not the asked shapes; rather than more pilots on the full task, the
ladder trains on the simplest slice first (:mod:`reelkit.data.ladder`: rung 1 is stills of one static object on
a solid background) and measures adherence against CPU-minutes, so each design and lever has a curve, and a rung
warm-starts the next (``init_from``). The denoiser is diffusers' ``UNet2DConditionModel`` (cross-attention to
the text at full latent resolution, the Stable Diffusion family of T2V-Turbo's teachers) over the bundled image
VAE's latents (``image_vae_f4``), trained jointly with a :class:`~reelkit.models.text.WorldTextEncoder` by
rectified flow with logit-normal noise levels, as the teacher is. ``conditioning: slots`` replaces the text
tower with one learnt token per attribute (shape, colour, background colour), a perfect parser: the control
that tells "cannot draw the shape" from "cannot read the word".

Launch::

    reelkit train ladder --config configs/ladder_rung1.yaml
    reelkit train ladder --config configs/ladder_rung1.yaml world.object_scale=1.5 output_dir=runs/ladder/x1.5

Every ``eval_every`` steps the EMA weights generate ``eval_prompts`` held-out prompts of the slice (seed
``1000 + i``, Euler over the flow, guidance ``eval_guidance``), the judge reads them (a still repeated to 17
frames at 64 px), and ``adherence.csv`` gains a row with the CPU-minutes spent so far; the best-reading weights
are kept in ``output_dir/best``. Checkpoints are atomic and resume; a resumed run whose config changed what the
checkpoint holds is one ``error:`` line.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from reelkit.data.captions import BACKGROUND_COLORS, COLORS, SHAPES
from reelkit.data.ladder import WorldSlice, heldout_slice_seeds, render_slice
from reelkit.data.world import object_coverage
from reelkit.errors import ReelkitError
from reelkit.files import atomic_path
from reelkit.train.common import apply_gradients, autocast, build, check_mixed_precision, endless, load_config
from reelkit.train.recipe import Recipe

UNET_DEFAULTS = {
    "in_channels": 8, "out_channels": 8, "block_out_channels": [48, 96, 96], "layers_per_block": 1,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "attention_head_dim": 8, "norm_num_groups": 16,
}
ADHERENCE_HEADER = "step,cpu_minutes,shape,color,count,mean"


@dataclass
class LadderConfig:
    output_dir: str = "runs/ladder/rung1"
    world: dict = field(default_factory=lambda: {"rung": 1})  # a WorldSlice: rung N, then keys that differ
    size: int = 64
    cache_clips: int = 4096
    latent_cache: str | None = None  # default: runs/ladder_cache/<slice and size>
    vae: str = "image_vae_f4"  # the image VAE that encodes the stills (a bundled name or a folder)
    model: dict = field(default_factory=dict)  # UNet2DConditionModel options over UNET_DEFAULTS
    text_encoder: dict = field(default_factory=dict)  # WorldTextEncoder options
    conditioning: str = "text"  # "text" | "slots" (one learnt token per attribute: the perfect-parser control)
    batch_size: int = 64
    learning_rate: float = 3e-4
    warmup_steps: int = 100
    max_steps: int = 3000
    time_limit_minutes: float | None = None
    ema_decay: float = 0.995
    caption_dropout: float = 0.1
    logit_mean: float = 0.0
    logit_std: float = 1.0
    object_weight: float = 0.0  # > 0: the loss weighs latent pixels on the object (1 + this) x the background
    grad_clip: float = 1.0
    mixed_precision: str = "no"
    save_every: int = 250
    log_every: int = 25
    eval_every: int = 250
    eval_prompts: int = 48
    eval_steps: int = 25
    eval_guidance: float = 5.0
    init_from: str | None = None  # a ladder model folder (e.g. the previous rung's output_dir/model)
    seed: int = 0
    threads: int | None = None

    def __post_init__(self):
        check_mixed_precision(self.mixed_precision)
        if not isinstance(self.world, dict):
            raise ReelkitError(f"world must be a mapping (e.g. {{rung: 1}}), got {self.world!r}")
        self.slice = WorldSlice.from_dict(self.world)
        if self.slice.num_frames != 1:
            raise ReelkitError("the ladder recipe trains stills (rungs 1 and 2, num_frames 1); clips (rungs 3 and 4) "
                               "train with `reelkit train t2v`")
        if self.size % 16:
            raise ReelkitError(f"size must be a multiple of 16 (the VAE's 4x, the U-Net's 4x), got {self.size}")
        if self.conditioning not in ("text", "slots"):
            raise ReelkitError(f"conditioning must be text or slots, got {self.conditioning!r}")
        if self.conditioning == "slots" and (self.slice.object_counts != (1,) or self.slice.backgrounds != ("solid",)):
            raise ReelkitError("conditioning: slots names one object on a solid background (rung 1's slice)")
        if not 0 <= self.object_weight <= 1000:
            raise ReelkitError(f"object_weight must lie in 0 .. 1000 (0: off), got {self.object_weight}")
        if not 0 <= self.caption_dropout < 1 or self.eval_every < 0 or not 1 <= self.eval_prompts <= 512:
            raise ReelkitError("caption_dropout must lie in [0, 1), eval_every be >= 0, eval_prompts in 1 .. 512")
        if self.latent_cache is None:
            s = self.slice
            name = (f"f{s.num_frames}_n{''.join(map(str, s.object_counts))}_{'-'.join(s.backgrounds)}_"
                    f"{'moving' if s.moving else 'static'}_x{s.object_scale:g}_s{self.size}")
            self.latent_cache = f"runs/ladder_cache/{name}"


def slot_labels(scene) -> tuple[int, int, int]:
    """(shape, colour, background colour) indices of a one-object, solid-background scene."""
    obj = scene.objects[0]
    return SHAPES.index(obj.shape), COLORS.index(obj.color), BACKGROUND_COLORS.index(scene.background.colors[0])


@torch.no_grad()
def build_slice_cache(folder: str | Path, world_slice: WorldSlice, size: int, count: int, vae,
                      shard_size: int = 512, progress=None) -> Path:
    """Encode the stills of seeds ``0 .. count`` of ``world_slice`` (posterior means times the scaling factor,
    fp16) with their captions, slot labels and object coverage at latent resolution, in atomically written
    shards; present shards are kept, so an interrupted build resumes and a larger ``count`` extends the cache."""
    from safetensors.torch import save_file

    from reelkit.train.latent_cache import open_cache_folder, shard_name

    settings = {"slice": world_slice.__dict__ | {"object_counts": list(world_slice.object_counts),
                                                 "backgrounds": list(world_slice.backgrounds)},
                "size": size, "shard_size": shard_size}
    folder = open_cache_folder(folder, count, settings, "a ladder cache")
    single = world_slice.object_counts == (1,) and world_slice.backgrounds == ("solid",)
    for shard in range((count + shard_size - 1) // shard_size):
        path = folder / shard_name(shard)
        if path.is_file():
            continue
        seeds = range(shard * shard_size, min(count, (shard + 1) * shard_size))
        clips = [render_slice(seed, world_slice, size) for seed in seeds]
        latents = [vae.encode(torch.stack([c.video[:, 0] for c in clips[i:i + 64]])).latent_dist.mean
                   for i in range(0, len(clips), 64)]
        labels = torch.tensor([slot_labels(c.scene) if single else (-1, -1, -1) for c in clips])
        latent = torch.cat(latents) * vae.config.scaling_factor
        factor = size // latent.shape[-1]
        coverage = torch.stack([F.avg_pool2d(object_coverage(c.scene, 1, size), factor)[0] for c in clips])
        tensors = {"latent": latent.half().contiguous(), "labels": labels, "coverage": coverage.half().contiguous()}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"captions": json.dumps([c.caption for c in clips])})
        if progress is not None:
            progress(seeds.stop)
    return folder


def load_slice_cache(folder: Path, count: int) -> tuple[torch.Tensor, list[str], torch.Tensor, torch.Tensor]:
    """(latents (N, C, h, w) fp32, captions, slot labels (N, 3), object coverage (N, h, w)) of the first ``count``
    cached stills."""
    from safetensors import safe_open

    from reelkit.train.latent_cache import shard_name

    latents, captions, labels, coverage, shard = [], [], [], [], 0
    while sum(len(c) for c in latents) < count and (path := folder / shard_name(shard)).is_file():
        with safe_open(str(path), "pt") as handle:
            latents.append(handle.get_tensor("latent").float())
            labels.append(handle.get_tensor("labels"))
            coverage.append(handle.get_tensor("coverage").float())
            captions += json.loads(handle.metadata()["captions"])
        shard += 1
    return torch.cat(latents)[:count], captions[:count], torch.cat(labels)[:count], torch.cat(coverage)[:count]


class SlotEncoder(torch.nn.Module):
    """One learnt token per attribute (shape, colour, background colour); the last row of each table is the
    dropped condition that guidance needs."""

    def __init__(self, dim: int = 128):
        super().__init__()
        self.tables = torch.nn.ModuleList(torch.nn.Embedding(n + 1, dim)
                                          for n in (len(SHAPES), len(COLORS), len(BACKGROUND_COLORS)))

    @staticmethod
    def dropped(batch: int) -> torch.Tensor:
        return torch.tensor([len(SHAPES), len(COLORS), len(BACKGROUND_COLORS)]).expand(batch, 3)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:  # (B, 3) -> (B, 3, dim)
        return torch.stack([table(labels[:, i]) for i, table in enumerate(self.tables)], 1)


class LadderDenoiser(torch.nn.Module):
    """U-Net + its condition encoder as one module (one optimiser, one EMA)."""

    def __init__(self, unet, encoder, tokenizer=None):
        super().__init__()
        self.unet, self.encoder, self.tokenizer = unet, encoder, tokenizer

    def condition(self, captions: list[str], labels: torch.Tensor) -> torch.Tensor:
        """Text states ``(B, L, D)`` of the captions, or slot tokens ``(B, 3, D)`` of the labels."""
        if self.tokenizer is None:
            return self.encoder(labels)
        from reelkit.models.text import tokenize_prompts

        tokens = tokenize_prompts(captions, self.tokenizer)
        return self.encoder(tokens["input_ids"], tokens["attention_mask"])

    def forward(self, noisy: torch.Tensor, timestep: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        # with class_embed_type "projection" the mean state also modulates every ResNet block through the time
        # embedding (ADM's class conditioning; AdaGN with resnet_time_scale_shift "scale_shift")
        pooled = states.mean(1) if self.unet.config.class_embed_type == "projection" else None
        return self.unet(noisy, timestep, states, class_labels=pooled).sample


@torch.no_grad()
def sample_flow(denoiser: LadderDenoiser, cond: torch.Tensor, uncond: torch.Tensor, x: torch.Tensor, steps: int,
                guidance: float, start: float = 1.0) -> torch.Tensor:
    """Euler over the rectified flow from ``x`` at noise level ``start`` (1: pure noise) to data (sigma 0), with
    classifier-free guidance (Ho & Salimans 2022); the teacher's ``FlowMatchEulerDiscreteScheduler``, shift 1."""
    sigmas = torch.linspace(start, 0.0, steps + 1)
    for i in range(steps):
        t = (sigmas[i] * 1000).expand(len(x))
        cond_v, uncond_v = denoiser(torch.cat([x, x]), torch.cat([t, t]), torch.cat([cond, uncond])).chunk(2)
        x = x + (sigmas[i + 1] - sigmas[i]) * (uncond_v + guidance * (cond_v - uncond_v))
    return x


@torch.no_grad()
def judge_stills(latents: torch.Tensor, vae, judge=None) -> tuple[torch.Tensor, list[list[dict[str, str]]]]:
    """Decode still latents and read them with the judge (each still repeated to 17 frames, at 64 px: larger
    stills are area-downsampled): ``(images (N, 3, 64, 64), the objects the judge sees per still)``."""
    from reelkit.eval.adherence import judge_clips
    from reelkit.models.judge import load_judge

    images = vae.decode(latents / vae.config.scaling_factor).sample.clamp(-1, 1)
    if images.shape[-1] != 64:
        images = F.interpolate(images, size=(64, 64), mode="area")
    seen, _ = judge_clips(judge or load_judge(), images[:, :, None].expand(-1, -1, 17, -1, -1).contiguous())
    return images, seen


class LadderRecipe(Recipe):
    """A rung: the slice's latent cache built once, the U-Net and its condition encoder with EMA, flow matching."""

    def _setup_data(self) -> None:
        from reelkit.vae.image_vae import load_image_vae

        config = self.config
        self.vae = load_image_vae(config.vae)
        if self.accelerator.is_main_process:
            build_slice_cache(config.latent_cache, config.slice, config.size, config.cache_clips, self.vae,
                              progress=lambda n: self.accelerator.print(f"ladder cache: {n} stills", flush=True))
        self.accelerator.wait_for_everyone()
        self.latents, self.captions, self.slots, self.coverage = load_slice_cache(Path(config.latent_cache),
                                                                                  config.cache_clips)

    def _setup_models(self) -> None:
        from diffusers import UNet2DConditionModel
        from diffusers.training_utils import EMAModel

        from reelkit.models.text import WorldTextEncoder, build_tokenizer

        config = self.config
        options = {**UNET_DEFAULTS, **config.model}
        tokenizer = build_tokenizer() if config.conditioning == "text" else None
        if tokenizer is not None:
            encoder = build(WorldTextEncoder, "text_encoder", config.text_encoder, vocab_size=len(tokenizer))
        else:
            encoder = SlotEncoder(config.text_encoder.get("dim", 128))
        dim = encoder.config.dim if tokenizer is not None else encoder.tables[0].embedding_dim
        unet = build(UNet2DConditionModel, "model", options, sample_size=config.size // 4, cross_attention_dim=dim)
        if config.init_from is not None:
            unet, encoder = _warm_start(Path(config.init_from), unet, encoder)
        self.denoiser = LadderDenoiser(unet, encoder, tokenizer)
        self.ema = EMAModel(self.denoiser.parameters(), decay=config.ema_decay)

    def _setup_optimizer(self) -> None:
        from diffusers.optimization import get_constant_schedule_with_warmup

        self.optimizer = torch.optim.AdamW(self.denoiser.parameters(), lr=self.config.learning_rate,
                                           weight_decay=0.01)
        self.scheduler = get_constant_schedule_with_warmup(self.optimizer, self.config.warmup_steps)

    def _prepare(self) -> None:
        self.denoiser, self.optimizer = self.accelerator.prepare(self.denoiser, self.optimizer)
        self.accelerator.register_for_checkpointing(self.scheduler)
        self.accelerator.register_for_checkpointing(self.ema)

    def _setup_logs(self) -> None:
        super()._setup_logs()
        from reelkit.train.common import start_csv_log

        self.ema.to(self.accelerator.device)
        self.adherence_csv = start_csv_log(self.output_dir / "adherence.csv", ADHERENCE_HEADER, self.step)
        rows = [line.split(",") for line in self.adherence_csv.read_text().splitlines()[1:] if line]
        self.cpu_offset = float(rows[-1][1]) if rows else 0.0  # CPU-minutes of the run before this resume
        self.best = max((float(row[-1]) for row in rows), default=float("-inf"))
        self.cpu_start = time.process_time()
        self.order = endless(torch.utils.data.DataLoader(range(len(self.latents)), batch_size=self.config.batch_size,
                                                         shuffle=True, drop_last=True, generator=self.generator))

    def train_step(self) -> dict[str, float]:
        config, accelerator, generator = self.config, self.accelerator, self.generator
        denoiser = accelerator.unwrap_model(self.denoiser)
        index = next(self.order)
        dropped = torch.rand(len(index), generator=generator) < config.caption_dropout
        captions = ["" if d else self.captions[i] for i, d in zip(index.tolist(), dropped.tolist(), strict=True)]
        labels = torch.where(dropped[:, None], SlotEncoder.dropped(len(index)), self.slots[index])
        x0 = self.latents[index].to(accelerator.device)
        sigma = torch.sigmoid(config.logit_mean + config.logit_std * torch.randn(len(x0), generator=generator))
        noise = torch.randn(x0.shape, generator=generator)
        noisy = (1 - sigma.view(-1, 1, 1, 1)) * x0 + sigma.view(-1, 1, 1, 1) * noise
        with autocast(config.mixed_precision, accelerator.device):
            states = denoiser.condition(captions, labels.to(accelerator.device))
            prediction = self.denoiser(noisy, sigma * 1000, states).float()
        error = (prediction - (noise - x0)).pow(2)  # rectified flow's velocity target
        if config.object_weight:  # the object is ~5% of a still: weigh it up so its shape is not lost in the rest
            weight = (1 + config.object_weight * self.coverage[index][:, None]).to(error).expand_as(error)
            loss = (error * weight).mean() / weight.mean()
        else:
            loss = error.mean()
        apply_gradients(accelerator, loss, self.denoiser.parameters(), self.optimizer, self.scheduler,
                        config.grad_clip)
        self.ema.step(denoiser.parameters())
        return {"loss": loss.item()}

    def after_step(self) -> None:
        config = self.config
        if config.eval_every and self.accelerator.is_main_process and (
                self.step % config.eval_every == 0 or self.step == config.max_steps):
            scores = self.evaluate()
            self.accelerator.print(f"step {self.step} ({scores['cpu_minutes']:.1f} CPU-min) adherence " + " ".join(
                f"{k} {scores[k]:.3f}" for k in ("shape", "color", "count")), flush=True)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Judge the EMA weights on the slice's held-out prompts; keep them in ``output_dir/best`` when best."""
        (self.output_dir / "samples").mkdir(exist_ok=True)
        denoiser = self._ema_denoiser()
        scores = ladder_adherence(denoiser, self.vae, self.config,
                                  sheet=self.output_dir / "samples" / f"step_{self.step:06d}.png")
        scores["cpu_minutes"] = self.cpu_offset + (time.process_time() - self.cpu_start) / 60
        with self.adherence_csv.open("a") as handle:
            handle.write(f"{self.step}," + ",".join(f"{scores[k]:.4f}" for k in ADHERENCE_HEADER.split(",")[1:])
                         + "\n")
        if scores["mean"] > self.best:
            self.best = scores["mean"]
            self.export(self.output_dir / "best", denoiser)
        return scores

    def _ema_denoiser(self) -> LadderDenoiser:
        import copy

        denoiser = copy.deepcopy(self.accelerator.unwrap_model(self.denoiser)).eval()
        self.ema.copy_to(denoiser.parameters())
        return denoiser

    def export(self, destination: Path, denoiser: LadderDenoiser | None = None) -> None:
        """The EMA U-Net, condition encoder and tokenizer in diffusers layout, with ``ladder.json`` (the slice);
        ``denoiser``: an EMA copy already made."""
        from reelkit.loading import swap_in_folder

        denoiser = denoiser or self._ema_denoiser()
        staging = destination.with_name(f".{destination.name}.tmp")
        denoiser.unet.save_pretrained(staging / "unet")
        if denoiser.tokenizer is not None:
            denoiser.encoder.save_pretrained(staging / "text_encoder")
            denoiser.tokenizer.save_pretrained(staging / "tokenizer")
        else:
            torch.save(denoiser.encoder.state_dict(), staging / "slots.pt")
        (staging / "ladder.json").write_text(json.dumps({"world": self.config.world, "size": self.config.size,
                                                         "conditioning": self.config.conditioning}, indent=1))
        swap_in_folder(staging, destination)


def ladder_adherence(denoiser: LadderDenoiser, vae, config: LadderConfig,
                     sheet: Path | None = None) -> dict[str, float]:
    """Shape, colour and count adherence (and their mean) of ``denoiser`` on the slice's held-out prompts; with
    ``sheet``, the first 16 samples are saved there as a 2 x 8 contact sheet (PNG)."""
    from reelkit.eval.adherence import mean_adherence, prompt_adherence

    clips = [render_slice(seed, config.slice, 64) for seed in heldout_slice_seeds(config.eval_prompts)]
    prompts = [clip.caption for clip in clips]
    single = config.conditioning == "slots"
    labels = torch.tensor([slot_labels(c.scene) for c in clips]) if single else SlotEncoder.dropped(len(clips))
    cond = denoiser.condition(prompts, labels)
    uncond = denoiser.condition([""] * len(prompts), SlotEncoder.dropped(len(prompts)))
    h = config.size // 4
    noise = torch.randn((len(prompts), denoiser.unet.config.in_channels, h, h),
                        generator=torch.Generator().manual_seed(1000))
    images, seen = judge_stills(sample_flow(denoiser, cond, uncond, noise, config.eval_steps, config.eval_guidance),
                                vae)
    if sheet is not None:
        save_sheet(images[:16], sheet)
    scores = mean_adherence(prompt_adherence(p, s) for p, s in zip(prompts, seen, strict=True))
    scores = {k: scores[k] for k in ("shape", "color", "count")}
    scores["mean"] = sum(scores.values()) / 3
    return scores


def save_sheet(images: torch.Tensor, path: Path, columns: int = 8) -> None:
    """Stills ``(N, 3, H, W)`` in [-1, 1] as one PNG grid, ``columns`` wide."""
    from PIL import Image

    n, _, h, w = images.shape
    rows = -(-n // columns)
    grid = torch.zeros(3, rows * h, columns * w)
    for i, image in enumerate(images):
        grid[:, (i // columns) * h:(i // columns + 1) * h, (i % columns) * w:(i % columns + 1) * w] = image
    pixels = ((grid + 1) * 127.5).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()
    with atomic_path(path) as tmp:
        Image.fromarray(pixels).save(tmp, format="PNG")


def load_ladder_model(folder: str | Path) -> tuple[LadderDenoiser, dict]:
    """The (eval-mode) denoiser of a ladder model folder and its ``ladder.json`` (world slice, size, conditioning)."""
    from diffusers import UNet2DConditionModel

    from reelkit.models.text import WorldTextEncoder, build_tokenizer

    folder = Path(folder)
    if not (folder / "ladder.json").is_file() or not (folder / "unet").is_dir():
        raise ReelkitError(f"{folder}: not a ladder model folder (no ladder.json and unet/)")
    config = json.loads((folder / "ladder.json").read_text())
    unet = UNet2DConditionModel.from_pretrained(folder / "unet")
    if config["conditioning"] == "slots":
        encoder = SlotEncoder(unet.config.cross_attention_dim)
        encoder.load_state_dict(torch.load(folder / "slots.pt"))
        return LadderDenoiser(unet, encoder).eval(), config
    encoder = WorldTextEncoder.from_pretrained(folder / "text_encoder")
    return LadderDenoiser(unet, encoder, build_tokenizer()).eval(), config


def _warm_start(folder: Path, unet, encoder):
    """The U-Net and condition encoder of a ladder model folder, checked against the fresh ones."""
    from reelkit.train.common import architecture_differences

    loaded, _ = load_ladder_model(folder)
    shown = architecture_differences(unet, loaded.unet)
    if shown:
        raise ReelkitError(f"init_from {folder}: its U-Net does not match the config ({shown})")
    if isinstance(encoder, SlotEncoder) != isinstance(loaded.encoder, SlotEncoder):
        wanted = "slots" if isinstance(encoder, SlotEncoder) else "text"
        raise ReelkitError(f"init_from {folder}: its conditioning is not the config's ({wanted})")
    if not isinstance(encoder, SlotEncoder) and architecture_differences(encoder, loaded.encoder):
        raise ReelkitError(f"init_from {folder}: its text encoder does not match the config")
    return loaded.unet.float().train(), loaded.encoder.float().train()


def train(config: LadderConfig) -> Path:
    return LadderRecipe(config).run()


def run(config_path: str | Path, **overrides) -> Path:
    return train(load_config(LadderConfig, config_path, **overrides))


__all__ = ["LadderConfig", "LadderDenoiser", "LadderRecipe", "SlotEncoder", "build_slice_cache",
           "judge_stills", "ladder_adherence", "load_ladder_model", "load_slice_cache", "run", "sample_flow", "train"]
