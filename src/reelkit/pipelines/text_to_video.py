"""TextToVideoPipeline: prompt -> video with a ``VideoDiT`` over CV-VAE latents (a diffusers pipeline).

Each denoising step calls the transformer once per guidance branch, inside
``transformer.cache_context("cond" | "uncond", step_index=i, num_inference_steps=n, timestep=t)``, so
step-aware caches (reelkit's AdaCache, diffusers' FirstBlockCache, MagCache, ...) see where the loop is
and keep one state per branch.

>>> import torch
>>> from reelkit.pipelines.text_to_video import TextToVideoPipeline, tiny_pipeline
>>> pipe = tiny_pipeline()                      # random weights; load_text_to_video() is the trained teacher
>>> video = pipe("a red circle moving right", num_frames=5, height=32, width=32, num_inference_steps=2,
...              generator=torch.Generator().manual_seed(0)).frames
>>> video.shape                                 # (B, C, T, H, W) in [-1, 1]
torch.Size([1, 3, 5, 32, 32])
>>> student = tiny_pipeline(student=True)       # load_text_to_video("student") is the bundled T2V-Turbo student
>>> student.guidance_distilled, type(student.scheduler).__name__
(True, 'FlowMatchLCMScheduler')
>>> student("a red circle moving right", num_frames=5, height=32, width=32, num_inference_steps=4,
...         guidance_scale=5.0, generator=torch.Generator().manual_seed(0)).frames.shape   # 4 calls, no CFG
torch.Size([1, 3, 5, 32, 32])
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler, FlowMatchLCMScheduler
from diffusers.utils import BaseOutput

from reelkit.conventions import TEMPORAL_FACTOR, is_valid_frame_count
from reelkit.errors import ReelkitError, ShapeError
from reelkit.models.text import encode_prompts, prepare_prompt
from reelkit.parallel import check_token_split
from reelkit.paths import ASSETS_DIR

OUTPUT_TYPES = ("pt", "np", "pil", "latent")


@dataclass
class TextToVideoPipelineOutput(BaseOutput):
    """``frames``: ``(B, C, T, H, W)`` in ``[-1, 1]`` ("pt"), ``(B, T, H, W, C)`` in ``[0, 1]`` ("np"), one list
    of PIL images per video ("pil"), or the latents ("latent")."""

    frames: torch.Tensor | np.ndarray | list


class TextToVideoPipeline(DiffusionPipeline):
    """Text-to-video with classifier-free guidance over a flow-matching (or any diffusers) scheduler.

    A guidance-distilled transformer (``config.guidance_embed``, the T2V-Turbo student) runs one branch per
    step with the guidance scale as an input; with a consistency scheduler (diffusers'
    ``FlowMatchLCMScheduler``) it samples in 1 to ``lcm_origin_steps`` steps on the distillation grid.
    """

    model_cpu_offload_seq = "text_encoder->transformer->vae"
    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds"]

    def __init__(self, transformer, vae, text_encoder, tokenizer, scheduler):
        super().__init__()
        self.register_modules(transformer=transformer, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                              scheduler=scheduler)

    @property
    def spatial_multiple(self) -> int:
        """Heights and widths must be multiples of this: the VAE's factor times the transformer's patch."""
        return self.vae.spatial_compression * self.transformer.config.patch_size

    @property
    def guidance_distilled(self) -> bool:
        """True for a student that takes the guidance scale as an input (no unconditional branch)."""
        return bool(getattr(self.transformer.config, "guidance_embed", False))

    @property
    def consistency_sampling(self) -> bool:
        """True when the scheduler is a consistency (LCM) sampler: few steps on the distillation grid."""
        return isinstance(self.scheduler, FlowMatchLCMScheduler)

    def enable_guidance_interval(self, low: float, high: float = 1.0) -> None:
        """Run classifier-free guidance only at noise levels ``low <= sigma <= high`` (0 clean, 1 pure noise);
        at the other steps only the conditional branch runs, one transformer call instead of two. Guidance in a
        limited interval (Kynkaanniemi et al. 2024): late, low-noise steps gain little from it, so skipping the
        unconditional branch there is a speed-up that the tuner measures like any other accelerator.

        >>> pipe = tiny_pipeline()
        >>> pipe.enable_guidance_interval(0.4)
        >>> pipe.guidance_interval
        (0.4, 1.0)
        >>> pipe.disable_guidance_interval()
        """
        if not 0 <= low < high <= 1:
            raise ReelkitError(f"the guidance interval must satisfy 0 <= low < high <= 1, got {low:g} .. {high:g}")
        self._guidance_interval = (float(low), float(high))

    def disable_guidance_interval(self) -> None:
        """Guidance at every step again (the default)."""
        self._guidance_interval = None

    @property
    def guidance_interval(self) -> tuple[float, float] | None:
        """The noise levels ``(low, high)`` where classifier-free guidance runs, or None for every step."""
        return getattr(self, "_guidance_interval", None)

    def enable_guidance_reuse(self, below: float = 0.5, every: int = 2, steps: Iterable[int] = ()) -> None:
        """Skip the unconditional branch at some guided steps and reuse the guidance difference ``cond - uncond``
        of the last step that computed it: at noise levels below ``below`` the branch runs at most once every
        ``every`` steps, and never at ``steps`` (Step Rehash's rehash steps, whose outputs are reused anyway).
        FasterCache's CFG-Cache (Lv et al. 2024) without its frequency split: late steps change the difference
        little, so a reused step costs one transformer call instead of two at almost no cost in quality.

        >>> pipe = tiny_pipeline()
        >>> pipe.enable_guidance_reuse(0.5)
        >>> _ = pipe("a red circle", num_frames=5, height=32, width=32, num_inference_steps=6)
        >>> pipe.guidance_reused_steps          # sigma < 0.5 from step 3: every other step from there reuses
        (3, 5)
        >>> pipe.disable_guidance_reuse()
        """
        if not 0 < below <= 1:
            raise ReelkitError(f"guidance reuse needs a noise level in (0, 1], got {below:g}")
        if not isinstance(every, int) or every < 2:
            raise ReelkitError(f"guidance reuse computes the unconditional branch once every >= 2 steps, got {every}")
        self._guidance_reuse = (float(below), every, frozenset(int(s) for s in steps if int(s) > 0))

    def disable_guidance_reuse(self) -> None:
        """Compute the unconditional branch at every guided step again (the default)."""
        self._guidance_reuse = None

    @property
    def guidance_reuse(self) -> tuple[float, int, frozenset[int]] | None:
        """``(below, every, steps)`` of :meth:`enable_guidance_reuse`, or None."""
        return getattr(self, "_guidance_reuse", None)

    @property
    def guidance_reused_steps(self) -> tuple[int, ...]:
        """The steps of the last generation that reused the guidance difference."""
        return tuple(getattr(self, "_reused_steps", ()))

    def _reuses_guidance(self, step_index: int, sigma: float, last_computed: int | None) -> bool:
        if self.guidance_reuse is None or last_computed is None:
            return False
        below, every, steps = self.guidance_reuse
        return step_index in steps or (sigma < below and step_index - last_computed < every)

    def noise_level(self, step_index: int, t: torch.Tensor) -> float:
        """The noise level sigma in [0, 1] of a denoising step: the scheduler's sigma, or ``t`` over its range."""
        sigmas = getattr(self.scheduler, "sigmas", None)
        if sigmas is not None and step_index < len(sigmas):
            return float(sigmas[step_index])
        return float(t) / self.scheduler.config.num_train_timesteps

    @property
    def current_timestep(self):
        """The timestep of the denoising step in progress (None outside a generation)."""
        return getattr(self, "_current_timestep", None)

    def check_inputs(self, prompt, negative_prompt, num_frames: int, height: int, width: int,
                     num_inference_steps: int, guidance_scale: float, output_type: str,
                     lcm_origin_steps: int = 50) -> tuple[list[str], str | None]:
        """Refuse bad arguments with one-line errors; return ``(prompts, negative_prompt)`` as the text encoder
        reads them (size and speed words dropped with a notice: see :func:`prepare_prompt`)."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts:
            raise ReelkitError("no prompt given")
        prompts = [prepare_prompt(text, self.tokenizer) for text in prompts]
        if isinstance(negative_prompt, str) and negative_prompt:
            negative_prompt = prepare_prompt(negative_prompt, self.tokenizer)
        if not is_valid_frame_count(num_frames):
            raise ShapeError(f"{num_frames} frames is not 1+4k (1, 5, 9, 13, 17, ...)")
        multiple = self.spatial_multiple
        if height <= 0 or width <= 0 or height % multiple or width % multiple:
            raise ShapeError(f"height and width must be positive multiples of {multiple} (the VAE's "
                             f"{self.vae.spatial_compression} x the transformer's patch "
                             f"{self.transformer.config.patch_size}); got {height}x{width}")
        if num_inference_steps < 1:
            raise ReelkitError(f"num_inference_steps must be at least 1, got {num_inference_steps}")
        if self.consistency_sampling and num_inference_steps > lcm_origin_steps:
            raise ReelkitError(f"a consistency sampler takes at most lcm_origin_steps={lcm_origin_steps} steps (the "
                               f"distillation grid), got {num_inference_steps}")
        if guidance_scale < 1:
            raise ReelkitError(f"guidance_scale must be at least 1 (1 turns guidance off), got {guidance_scale}")
        if output_type not in OUTPUT_TYPES:
            raise ReelkitError(f"output_type must be one of {', '.join(OUTPUT_TYPES)}, got {output_type!r}")
        return prompts, negative_prompt

    def encode_prompt(self, prompts: list[str], negative_prompt: str | None, do_classifier_free_guidance: bool,
                      num_videos_per_prompt: int = 1) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Text-encoder states for the prompts and, with guidance, for the negative prompt (default: empty)."""
        prompt_embeds = encode_prompts(prompts, self.tokenizer, self.text_encoder)
        prompt_embeds = prompt_embeds.repeat_interleave(num_videos_per_prompt, dim=0)
        if not do_classifier_free_guidance:
            return prompt_embeds, None
        negative = encode_prompts([negative_prompt or ""], self.tokenizer, self.text_encoder)
        return prompt_embeds, negative.expand_as(prompt_embeds)

    def prepare_latents(self, batch_size: int, num_frames: int, height: int, width: int, dtype, device,
                        generator, latents: torch.Tensor | None = None) -> torch.Tensor:
        shape = (batch_size, self.transformer.config.in_channels, (num_frames - 1) // TEMPORAL_FACTOR + 1,
                 height // self.vae.spatial_compression, width // self.vae.spatial_compression)
        check_token_split(self.transformer, shape)  # under context parallelism: one error on every rank, no hang
        if latents is not None:
            if tuple(latents.shape) != shape:
                raise ShapeError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
            return latents.to(device, dtype)
        from diffusers.utils.torch_utils import randn_tensor

        noise = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        return noise * getattr(self.scheduler, "init_noise_sigma", 1.0)  # DDIM-style schedulers scale noise

    def predict(self, latents: torch.Tensor, t: torch.Tensor, prompt_embeds: torch.Tensor,
                negative_prompt_embeds: torch.Tensor | None, guidance_scale: float, step_index: int,
                num_inference_steps: int, guidance_delta: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The guided model output at one step and its guidance difference ``cond - uncond``; each branch runs
        in its own cache context (a guidance-distilled student runs only the conditional one, with the scale as
        an input). A given ``guidance_delta`` stands in for the unconditional branch (guidance reuse)."""
        timestep = t.expand(latents.shape[0]).to(latents.dtype)
        extra = {"guidance": latents.new_full((latents.shape[0],), guidance_scale)} if self.guidance_distilled else {}
        with self.transformer.cache_context("cond", step_index=step_index, num_inference_steps=num_inference_steps,
                                            timestep=t):
            cond = self.transformer(latents, timestep, prompt_embeds, **extra).sample
        if negative_prompt_embeds is None:
            return cond, None
        if guidance_delta is not None:  # uncond + s (cond - uncond) with uncond = cond - delta
            return cond + (guidance_scale - 1) * guidance_delta, guidance_delta
        with self.transformer.cache_context("uncond", step_index=step_index,
                                            num_inference_steps=num_inference_steps, timestep=t):
            uncond = self.transformer(latents, timestep, negative_prompt_embeds).sample
        delta = cond - uncond
        return uncond + guidance_scale * delta, delta

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        latents = latents.to(self.vae.dtype) / self.vae.config.scaling_factor
        return self.vae.decode(latents).sample.float().clamp(-1, 1)

    @torch.no_grad()
    def __call__(self, prompt: str | list[str], negative_prompt: str | None = None, num_frames: int = 17,
                 height: int = 64, width: int = 64, num_inference_steps: int = 50, guidance_scale: float = 5.0,
                 num_videos_per_prompt: int = 1, generator: torch.Generator | list[torch.Generator] | None = None,
                 latents: torch.Tensor | None = None, output_type: str = "pt", return_dict: bool = True,
                 callback_on_step_end: Callable[[DiffusionPipeline, int, torch.Tensor, dict], dict] | None = None,
                 callback_on_step_end_tensor_inputs: tuple[str, ...] = ("latents",), lcm_origin_steps: int = 50):
        """Generate ``num_videos_per_prompt`` videos per prompt.

        ``guidance_scale`` 1 disables classifier-free guidance (one model call per step); a guidance-distilled
        student always makes one call per step and takes the scale as an input. With a consistency scheduler
        the steps are the first of every ``lcm_origin_steps // num_inference_steps`` on the
        ``lcm_origin_steps``-step grid the student was distilled on (T2V-Turbo's 4 steps: sigma 1, 0.76,
        0.51, 0.27 of 50). ``callback_on_step_end``
        is called as ``callback(pipe, step_index, timestep, tensors)`` with the tensors named in
        ``callback_on_step_end_tensor_inputs`` and may return replacements for them (diffusers' convention).
        """
        prompts, negative_prompt = self.check_inputs(prompt, negative_prompt, num_frames, height, width,
                                                     num_inference_steps, guidance_scale, output_type, lcm_origin_steps)
        unknown = set(callback_on_step_end_tensor_inputs) - set(self._callback_tensor_inputs)
        if unknown:
            raise ReelkitError(f"callback tensors must be among {self._callback_tensor_inputs}, got {sorted(unknown)}")
        device = self._execution_device
        do_cfg = guidance_scale > 1.0 and not self.guidance_distilled
        prompt_embeds, negative_prompt_embeds = self.encode_prompt(prompts, negative_prompt, do_cfg,
                                                                   num_videos_per_prompt)
        dtype = self.transformer.dtype
        prompt_embeds = prompt_embeds.to(dtype)
        negative_prompt_embeds = None if negative_prompt_embeds is None else negative_prompt_embeds.to(dtype)
        if self.consistency_sampling:
            self.scheduler.set_timesteps(sigmas=lcm_sigmas(num_inference_steps, lcm_origin_steps), device=device)
        else:
            self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        step_options = ({"generator": generator} if self.consistency_sampling and isinstance(generator, torch.Generator)
                        else {})  # the LCM step re-noises
        latents = self.prepare_latents(len(prompts) * num_videos_per_prompt, num_frames, height, width, dtype,
                                       device, generator, latents)

        delta, last_guided, self._reused_steps = None, None, []
        with self.progress_bar(total=len(timesteps)) as progress_bar:
            for i, t in enumerate(timesteps):
                self._current_timestep = t  # diffusers' timestep-driven caches (PAB, FasterCache) read it
                model_input = (self.scheduler.scale_model_input(latents, t)
                               if hasattr(self.scheduler, "scale_model_input") else latents)
                interval, sigma = self.guidance_interval, self.noise_level(i, t)
                guided = negative_prompt_embeds is not None and (interval is None or
                                                                 interval[0] <= sigma <= interval[1])
                reuse = guided and self._reuses_guidance(i, sigma, last_guided)
                if reuse:
                    self._reused_steps.append(i)
                elif guided:
                    last_guided = i
                noise_pred, delta = self.predict(model_input, t, prompt_embeds,
                                                 negative_prompt_embeds if guided else None, guidance_scale, i,
                                                 len(timesteps), delta if reuse else None)
                latents = self.scheduler.step(noise_pred, t, latents, return_dict=False, **step_options)[0]
                if callback_on_step_end is not None:
                    available = {"latents": latents, "prompt_embeds": prompt_embeds,
                                 "negative_prompt_embeds": negative_prompt_embeds}
                    tensors = {name: available[name] for name in callback_on_step_end_tensor_inputs}
                    updates = callback_on_step_end(self, i, t, tensors) or {}
                    latents = updates.get("latents", latents)
                    prompt_embeds = updates.get("prompt_embeds", prompt_embeds)
                    negative_prompt_embeds = updates.get("negative_prompt_embeds", negative_prompt_embeds)
                progress_bar.update()

        self._current_timestep = None
        if output_type == "latent":
            frames = latents
        else:
            video = self.decode_latents(latents)  # (B, C, T, H, W) in [-1, 1]
            if output_type == "pt":
                frames = video
            else:
                array = ((video + 1) / 2).permute(0, 2, 3, 4, 1).cpu().numpy()  # (B, T, H, W, C) in [0, 1]
                frames = array if output_type == "np" else [self.numpy_to_pil(clip) for clip in array]
        self.maybe_free_model_hooks()
        if not return_dict:
            return (frames,)
        return TextToVideoPipelineOutput(frames=frames)


def lcm_sigmas(num_steps: int, origin_steps: int = 50, num_train_timesteps: int = 1000) -> list[float]:
    """The consistency sampler's noise levels: every ``origin_steps // num_steps``-th level of the
    ``origin_steps``-level flow-matching grid, from pure noise down (LCM's timestep rule; unshifted, the
    scheduler applies its shift)."""
    grid = np.linspace(1.0, 1.0 / num_train_timesteps, origin_steps)
    return grid[:: origin_steps // num_steps][:num_steps].tolist()


def consistency_scheduler(shift: float = 1.0) -> FlowMatchLCMScheduler:
    """The student's scheduler: diffusers' flow-matching LCM sampler (x0 = x - sigma v, then re-noise)."""
    return FlowMatchLCMScheduler(num_train_timesteps=1000, shift=shift)


def default_scheduler() -> FlowMatchEulerDiscreteScheduler:
    """The teacher's scheduler: flow-matching Euler (its training objective), no resolution shift."""
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)


def tiny_pipeline(seed: int = 0, open_gates: bool = False, student: bool = False) -> TextToVideoPipeline:
    """A randomly initialised pipeline of tiny models, for tests and examples (no files needed).

    ``open_gates`` re-draws the adaLN-zero gates and the output layer (zero at initialisation), so the
    blocks change the output from step to step, as in a trained model: what accelerator tests need.
    ``student`` gives it a guidance embedding and the consistency (LCM) scheduler, like a distilled student."""
    from reelkit.models.dit import VideoDiT
    from reelkit.models.text import WorldTextEncoder, build_tokenizer
    from reelkit.vae.cvvae import CVVAE

    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    text_encoder = WorldTextEncoder(vocab_size=len(tokenizer), dim=16, num_layers=1, num_heads=2)
    transformer = VideoDiT(num_layers=2, num_attention_heads=2, attention_head_dim=8, text_dim=16, sample_size=4,
                           guidance_embed=student)
    vae = CVVAE(block_out_channels=(8, 8, 8, 8), norm_num_groups=4)
    if open_gates:
        for name, parameter in transformer.named_parameters():
            if any(key in name for key in ("time_modulation", "proj_out", "scale_shift_table", "cond_proj")):
                parameter.data.normal_(0, 0.3)
    scheduler = consistency_scheduler() if student else default_scheduler()
    pipe = TextToVideoPipeline(transformer.eval(), vae.eval(), text_encoder.eval(), tokenizer, scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


TEACHER = "teacher"
BUNDLED = ("teacher", "student")  # the 50-step teacher, and its 4-step T2V-Turbo student


def load_text_to_video(path: str | Path | None = None, vae=None, dtype: torch.dtype = torch.float32
                       ) -> TextToVideoPipeline:
    """Load a saved pipeline folder (``model_index.json``), or a bundled one by name: ``"teacher"`` (also
    ``None``) or ``"student"`` (the 4-step T2V-Turbo student, sampled with ``FlowMatchLCMScheduler``).

    A folder without a ``vae`` subfolder (the bundled ones) gets ``vae`` or the bundled CV-VAE it names (see
    :func:`~reelkit.loading.recorded_vae_name`); one without a
    ``text_encoder`` (the bundled student: distillation leaves it frozen) gets the teacher's text encoder and
    tokenizer.
    """
    import reelkit.models.dit  # noqa: F401  (diffusers loads only components of modules already imported)
    import reelkit.models.text  # noqa: F401
    from reelkit.loading import recorded_vae_name
    from reelkit.vae import load_cvvae

    path = ASSETS_DIR / (path or TEACHER) if path in (None, *BUNDLED) else Path(path)
    if not (path / "model_index.json").is_file():
        raise ReelkitError(f"{path}: not a text-to-video pipeline folder (no model_index.json)")
    if vae is None and not (path / "vae").is_dir():
        vae = load_cvvae(recorded_vae_name(path, "cvvae"), dtype=dtype)
    extra = {"vae": vae} if vae is not None else {}
    if not (path / "text_encoder").is_dir():  # the bundled student shares the teacher's (frozen) text encoder
        from transformers import AutoTokenizer

        from reelkit.models.text import WorldTextEncoder

        extra["text_encoder"] = WorldTextEncoder.from_pretrained(ASSETS_DIR / TEACHER / "text_encoder", dtype=dtype)
        extra["tokenizer"] = AutoTokenizer.from_pretrained(ASSETS_DIR / TEACHER / "tokenizer")
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()  # the component-loading bar is noise for a 5-part local folder
    try:
        pipe = TextToVideoPipeline.from_pretrained(path, dtype=dtype, **extra)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError, AttributeError) as error:
        raise ReelkitError(f"{path}: cannot load the pipeline ({' '.join(str(error).split())[:200]})") from None
    if not isinstance(pipe.transformer, torch.nn.Module) or not hasattr(pipe.transformer, "cache_context"):
        raise ReelkitError(f"{path}: its transformer is not a VideoDiT-like model")
    from reelkit.loading import check_finite_weights

    for model in (pipe.transformer, pipe.text_encoder, pipe.vae):
        check_finite_weights(model, path).eval()
    diffusers_logging.enable_progress_bar()
    return pipe


__all__ = ["TextToVideoPipeline", "TextToVideoPipelineOutput", "consistency_scheduler", "default_scheduler",
           "lcm_sigmas", "load_text_to_video", "tiny_pipeline"]
