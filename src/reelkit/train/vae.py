"""Recipe: train the image VAE from scratch, then the CV-VAE inflated from it (CV-VAE paper, section 3).

Stage ``image_vae``: an ``AutoencoderKL`` on single frames, L1 + KL. Stage ``cvvae``: the image VAE
inflated to a :class:`~reelkit.vae.cvvae.CVVAE`, trained on clips with L1 + KL + the decoder
regularisation ``|psi(X) - D_i(E_v(X))|`` through the frozen image decoder (+ an optional 3D PatchGAN
with the adaptive weight). Data: demo-world clips and camera-motion clips over natural photos.

Launch (configs carry the command in their header)::

    reelkit train vae --config configs/cvvae.yaml
    accelerate launch --multi_gpu --num_processes 2 -m reelkit train vae --config configs/cvvae.yaml

(``--multi_gpu`` selects accelerate's torchrun launcher; without CUDA the processes train on CPU over
gloo. ``torchrun --nproc_per_node 2 -m reelkit train vae ...`` works the same.)

The run checkpoints atomically to ``output_dir/checkpoint`` and resumes from it (``init_from`` warm-starts a
run whose folder is gone from exported weights), logs ``output_dir/loss.csv``, and at the end writes
``output_dir/model`` (diffusers layout, fp32).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from reelkit.conventions import batch_to_frames, frames_to_batch
from reelkit.errors import ReelkitError
from reelkit.objectives.reconstruction import object_weights, weighted_reconstruction
from reelkit.train.common import (
    apply_gradients,
    architecture_differences,
    autocast,
    check_mixed_precision,
    load_config,
)
from reelkit.train.recipe import Recipe

STAGES = ("image_vae", "cvvae")
LOGGED = ("l1", "kl", "reg", "gan", "disc")  # loss.csv columns (empty where a step has no such term)


@dataclass
class VaeTrainConfig:
    """One VAE training run. ``model`` overrides the architecture (image VAE stage) or the CVVAE options."""

    stage: str = "image_vae"
    output_dir: str = "runs/image_vae"
    image_vae: str | None = None  # cvvae stage: the image VAE to inflate and regularise against (None: bundled)
    init_from: str | None = None  # warm start from these weights when output_dir holds no checkpoint
    model: dict = field(default_factory=dict)
    num_frames: int = 1
    size: int = 64
    batch_size: int = 8
    photo_fraction: float = 0.5
    learning_rate: float = 2e-4
    warmup_steps: int = 100
    max_steps: int = 2000
    time_limit_minutes: float | None = None  # stop (and export) early when the wall clock runs out
    kl_weight: float = 1e-6
    mse_weight: float = 1.0
    object_weight: float = 0.0  # extra reconstruction weight on (and 1 px around) demo-world objects
    reg_weight: float = 1.0  # decoder regularisation (cvvae stage)
    mapping: str = "random"
    disc_weight: float = 0.0  # 0 disables the 3D PatchGAN
    disc_start: int = 0
    grad_clip: float = 1.0
    save_every: int = 200
    log_every: int = 20
    seed: int = 0
    threads: int | None = None
    mixed_precision: str = "no"  # "bf16": autocast the forward pass (about 1.8x faster on AVX512-BF16 CPUs)

    def __post_init__(self):
        if self.stage not in STAGES:
            raise ReelkitError(f"stage must be one of {', '.join(STAGES)}, got {self.stage!r}")
        from reelkit.vae.losses import MAPPINGS

        if self.mapping not in MAPPINGS:
            raise ReelkitError(f"mapping must be one of {', '.join(MAPPINGS)}, got {self.mapping!r}")
        check_mixed_precision(self.mixed_precision)
        if self.object_weight < 0:
            raise ReelkitError(f"object_weight must be >= 0, got {self.object_weight}")


class Autoencode(torch.nn.Module):
    """x -> (reconstruction, sampled z, posterior mean, posterior logvar): one forward for DDP to wrap."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor):
        posterior = self.vae.encode(x).latent_dist
        z = posterior.sample()
        return self.vae.decode(z).sample, z, posterior.mean, posterior.logvar


def build_models(config: VaeTrainConfig):
    """(trainable VAE, frozen image VAE or None) for the config's stage; ``init_from`` weights when set."""
    from reelkit.vae.image_vae import build_image_vae, load_image_vae

    if config.stage == "image_vae":
        vae = build_image_vae(**config.model)
        if config.init_from is not None:
            vae = _warm_start(vae, load_image_vae(config.init_from), config.init_from)
        return vae, None
    from reelkit.vae.cvvae import CVVAE
    from reelkit.vae.ops import load_cvvae

    image_vae = load_image_vae(config.image_vae).requires_grad_(False)
    vae = CVVAE.from_image_vae(image_vae, **config.model)
    if config.init_from is not None:
        vae = _warm_start(vae, load_cvvae(config.init_from), config.init_from)
    return vae, image_vae


def _warm_start(fresh, loaded, path: str):
    """``loaded`` (fp32, trainable) if its architecture is the one the config builds, else a one-line error."""
    shown = architecture_differences(fresh, loaded)
    if shown:
        raise ReelkitError(f"init_from {path}: does not match the config's architecture: {shown}")
    return loaded.float().train().requires_grad_(True)


@torch.no_grad()
def latent_scaling_factor(vae, batch: torch.Tensor) -> float:
    """1 / std of the latents of ``batch``: the factor that gives diffusion models unit-variance inputs."""
    if batch.ndim == 5:  # (B, C, 1, H, W) clips of one frame -> images
        batch = frames_to_batch(batch)
    return float(1.0 / vae.encode(batch).latent_dist.sample().std())


class VaeRecipe(Recipe):
    """The image VAE or the CV-VAE: rendered frames or clips (and photo crops), reconstruction + KL, for the
    CV-VAE the decoder regularisation through the frozen image VAE, optionally a 3D PatchGAN."""

    figures = (*LOGGED, "psnr")

    def _setup_data(self) -> None:
        from torch.utils.data import DataLoader

        from reelkit.data.datasets import VaeTrainStream

        config = self.config
        stream = VaeTrainStream(config.num_frames, config.size, config.photo_fraction, config.seed,
                                self.accelerator.process_index, with_coverage=config.object_weight > 0)
        self.batches = iter(DataLoader(stream, batch_size=config.batch_size, num_workers=0))

    def _setup_models(self) -> None:
        from reelkit.vae.losses import PatchDiscriminator3D

        vae, self.image_vae = build_models(self.config)
        self.autoencoder = Autoencode(vae)
        self.discriminator = PatchDiscriminator3D() if self.config.disc_weight > 0 else None

    def _setup_optimizer(self) -> None:
        from diffusers.optimization import get_cosine_schedule_with_warmup

        config = self.config
        self.optimizer = torch.optim.AdamW(self.autoencoder.parameters(), lr=config.learning_rate, betas=(0.9, 0.98),
                                           weight_decay=0.01)
        self.scheduler = get_cosine_schedule_with_warmup(self.optimizer, config.warmup_steps, config.max_steps)
        self.disc_optimizer = None
        if self.discriminator is not None:
            self.disc_optimizer = torch.optim.AdamW(self.discriminator.parameters(), lr=config.learning_rate,
                                                    betas=(0.5, 0.9))

    def _prepare(self) -> None:
        accelerator = self.accelerator
        if self.discriminator is not None:
            self.autoencoder, self.discriminator, self.optimizer, self.disc_optimizer = accelerator.prepare(
                self.autoencoder, self.discriminator, self.optimizer, self.disc_optimizer)
        else:
            self.autoencoder, self.optimizer = accelerator.prepare(self.autoencoder, self.optimizer)
        # stepped once per optimiser step (a prepared scheduler steps once per process)
        accelerator.register_for_checkpointing(self.scheduler)
        if self.image_vae is not None:
            self.image_vae.to(accelerator.device)

    def _setup_logs(self) -> None:
        super()._setup_logs()
        accelerator, config = self.accelerator, self.config
        accelerator.print(f"training {config.stage} on {accelerator.num_processes} process(es), "
                          f"{accelerator.device}, batch {config.batch_size} per process")
        self.model = accelerator.unwrap_model(self.autoencoder).vae

    def train_step(self) -> dict[str, float]:
        from reelkit.vae.losses import (
            adaptive_gan_weight,
            decoder_regularisation,
            hinge_discriminator_loss,
            kl_loss,
            psi,
        )

        config, accelerator, step = self.config, self.accelerator, self.step
        is_video, weighted = config.stage == "cvvae", config.object_weight > 0
        use_gan = self.discriminator is not None
        batch = next(self.batches)
        video, coverage = batch if weighted else (batch, None)
        video = video.to(accelerator.device)  # (B, C, T, H, W)
        x = video if is_video else frames_to_batch(video)
        weight = None
        if weighted:
            weight = object_weights(coverage.to(accelerator.device), config.object_weight)
            weight = weight if is_video else frames_to_batch(weight)
        with autocast(config.mixed_precision, accelerator.device):
            reconstruction, z, mean, logvar = self.autoencoder(x)
        reconstruction, z, mean, logvar = reconstruction.float(), z.float(), mean.float(), logvar.float()
        nll, l1 = weighted_reconstruction(reconstruction, x, weight, config.mse_weight)
        losses = {"l1": l1, "kl": kl_loss(mean, logvar)}
        loss = nll + config.kl_weight * losses["kl"]
        gan_step = use_gan and step >= config.disc_start and step % 2 == 1
        if is_video and config.reg_weight > 0 and not gan_step:
            target = psi(video, config.mapping, self.generator)
            with autocast(config.mixed_precision, accelerator.device):
                losses["reg"] = decoder_regularisation(lambda latents: self.image_vae.decode(latents).sample.float(),
                                                       z, target)
            loss = loss + config.reg_weight * losses["reg"]
        if use_gan and step >= config.disc_start and not gan_step:
            fake = reconstruction if is_video else batch_to_frames(reconstruction, video.shape[0])
            generator_loss = -self.discriminator(fake).mean()
            gan_weight = adaptive_gan_weight(nll, generator_loss, self.model.decoder.conv_out.weight)
            losses["gan"] = generator_loss
            loss = loss + config.disc_weight * gan_weight * generator_loss
        if gan_step:
            fake = (reconstruction if is_video else batch_to_frames(reconstruction, video.shape[0])).detach()
            losses["disc"] = hinge_discriminator_loss(self.discriminator(video), self.discriminator(fake))
            apply_gradients(accelerator, losses["disc"], self.discriminator.parameters(), self.disc_optimizer, None,
                            config.grad_clip)
        else:
            apply_gradients(accelerator, loss, self.autoencoder.parameters(), self.optimizer, self.scheduler,
                            config.grad_clip)
        psnr = -10 * math.log10(max(F.mse_loss(reconstruction.detach(), x).item() / 4, 1e-10))
        return {**{k: v.item() for k, v in losses.items()}, "psnr": psnr}

    def export(self, destination: Path) -> None:
        from torch.utils.data import DataLoader

        from reelkit.data.datasets import VaeTrainStream

        config, model = self.config, self.model.eval()
        if config.stage != "cvvae":  # the CV-VAE keeps its image VAE's factor: the latent spaces are meant to agree
            sample = next(iter(DataLoader(VaeTrainStream(config.num_frames, config.size, config.photo_fraction,
                                                         seed=10_000), batch_size=8)))
            model.register_to_config(scaling_factor=latent_scaling_factor(model, sample.to(self.accelerator.device)))
        model.save_pretrained(destination)
        self.accelerator.print(f"wrote {destination} (scaling_factor {model.config.scaling_factor:.4f})")


def train(config: VaeTrainConfig) -> Path:
    """Run the recipe; return the folder of the trained model (``output_dir/model``)."""
    return VaeRecipe(config).run()


def run(config_path: str | Path, **overrides) -> Path:
    return train(load_config(VaeTrainConfig, config_path, **overrides))
