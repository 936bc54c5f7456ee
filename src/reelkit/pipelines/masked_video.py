"""MaskedVideoPipeline: any set of known frames at any positions -> the full clip (MarDini).

One window (MarDini section 3, App. B): the known frames are encoded frame by frame at the planner's low
resolution and at the generator's; the planner runs **once** with [MASK] tokens on the frames to make,
and its planning signal stays fixed while the generator denoises those frames from noise (the known
frames stay clean, timestep 0) for ``num_inference_steps`` Euler steps of the flow-matching ODE.
Classifier-free guidance contrasts the plan with the null plan (the paper: 2.5 for image-to-video, none
for interpolation). Interpolation, image-to-video and expansion are masks; :meth:`long` generates
longer clips hierarchically (expand key frames, then interpolate between them).

>>> import torch
>>> from reelkit.pipelines.masked_video import tiny_masked_pipeline
>>> pipe = tiny_masked_pipeline()               # random weights; load_masked_video() is the bundled model
>>> first, last = torch.rand(2, 3, 32, 32) * 2 - 1
>>> pipe.interpolate(first, last, num_frames=5, num_inference_steps=2).frames.shape   # (B, C, T, H, W)
torch.Size([1, 3, 5, 32, 32])
>>> pipe.animate(first, num_frames=9, num_inference_steps=2).frames.shape
torch.Size([1, 3, 9, 32, 32])
>>> pipe.long(first[:, None], [0], num_frames=33, window=9, num_inference_steps=2).frames.shape
torch.Size([1, 3, 33, 32, 32])
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler
from diffusers.utils import BaseOutput

from reelkit.errors import ReelkitError, ShapeError
from reelkit.mardini.latents import decode_frames, downsample, encode_frames
from reelkit.mardini.masking import check_known_indices, reference_mask
from reelkit.paths import ASSETS_DIR
from reelkit.pipelines.text_to_video import default_scheduler  # flow-matching Euler, the training objective

BUNDLED = "mardini"
WINDOW = 17  # the frames one generator pass makes (the bundled model's training length)
I2V_GUIDANCE = 2.5  # MarDini's guidance for image-to-video; interpolation and expansion use none (1.0)


@dataclass
class MaskedVideoPipelineOutput(BaseOutput):
    """``frames``: ``(B, C, T, H, W)`` in ``[-1, 1]``; ``latents``: the generator's ``(B, 8, T, H/8, W/8)``."""

    frames: torch.Tensor
    latents: torch.Tensor | None = None


class MaskedVideoPipeline(DiffusionPipeline):
    """MarDini sampling: planner (low resolution, once) + generator (full resolution, every step).

    The generator network is the ``transformer`` component (as in diffusers' pipelines), so it is never
    confused with the ``generator`` argument, the random number generator."""

    model_cpu_offload_seq = "planner->transformer->vae"

    def __init__(self, planner, transformer, vae, scheduler, planner_scale: int = 2):
        super().__init__()
        self.register_modules(planner=planner, transformer=transformer, vae=vae, scheduler=scheduler)
        self.register_to_config(planner_scale=planner_scale)

    @property
    def spatial_multiple(self) -> int:
        """Heights and widths must be multiples of this (the VAE's 8 times the generator's patch, and the
        planner's latents must have whole sides)."""
        return 8 * max(self.transformer.config.patch_size, self.config.planner_scale)

    def check_frames(self, known: torch.Tensor, indices: list[int], num_frames: int) -> torch.Tensor:
        """``known`` as ``(B, 3, K, H, W)``; one-line errors for wrong shapes, sizes and indices."""
        if known.ndim == 4:
            known = known[None]
        if known.ndim != 5 or known.shape[1] != 3:
            raise ShapeError(f"known frames must be (B, 3, K, H, W) or (3, K, H, W); got {tuple(known.shape)}")
        if known.shape[2] != len(indices):
            raise ShapeError(f"{known.shape[2]} known frames but {len(indices)} indices")
        check_known_indices(num_frames, indices)
        H, W = known.shape[-2:]
        m = self.spatial_multiple
        if H % m or W % m:
            raise ShapeError(f"frame sides must be multiples of {m}; got {H}x{W}")
        return known

    @torch.no_grad()
    def __call__(self, known: torch.Tensor, indices: list[int], num_frames: int = WINDOW,
                 num_inference_steps: int = 25, guidance_scale: float = 1.0, generator: torch.Generator | None = None,
                 use_planner: bool = True, planner_scale: int | None = None, keep_known: bool = True,
                 output_type: str = "pt") -> MaskedVideoPipelineOutput:
        """Generate ``num_frames`` frames of which ``known`` ``(B, 3, K, H, W)`` sit at ``indices``.

        ``use_planner=False`` runs the generator alone on the null plan; ``planner_scale`` overrides how much
        smaller the planner's input is (1: the generator's resolution). ``keep_known`` returns the given
        frames untouched instead of their VAE reconstruction; ``output_type="latent"`` skips decoding.
        """
        order = sorted(range(len(indices)), key=lambda i: indices[i])
        known = self.check_frames(known, list(indices), num_frames)[:, :, order]
        indices = sorted(indices)
        known = known.to(self._execution_device, self.transformer.dtype)
        reference = reference_mask(num_frames, indices, known.shape[0]).to(known.device)  # (B, T)
        scale = (planner_scale or self.config.planner_scale) if use_planner else None
        z_ref, z_low = self.encode_known(known, indices, num_frames, scale)
        latents = self.denoise(z_ref, z_low, reference, num_inference_steps, guidance_scale, generator)
        if output_type == "latent":
            return MaskedVideoPipelineOutput(frames=latents, latents=latents)
        frames = decode_frames(self.vae, latents).float()
        if keep_known:
            frames[:, :, indices] = known.float()
        return MaskedVideoPipelineOutput(frames=frames, latents=latents)

    def encode_known(self, known: torch.Tensor, indices: list[int], num_frames: int, planner_scale: int | None
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Known frames ``(B, 3, K, H, W)`` at sorted ``indices`` to clip latents ``(B, C, T, H/8, W/8)`` for the
        generator and, unless ``planner_scale`` is None, ``(B, C, T, H/8s, W/8s)`` for the planner (zeros on the
        frames to generate)."""

        def place(latents: torch.Tensor) -> torch.Tensor:
            clip = latents.new_zeros(*latents.shape[:2], num_frames, *latents.shape[3:])
            clip[:, :, indices] = latents
            return clip

        dtype = self.transformer.dtype
        z_ref = place(encode_frames(self.vae, known).to(dtype))
        if planner_scale is None:
            return z_ref, None
        return z_ref, place(encode_frames(self.vae, downsample(known, planner_scale)).to(dtype))

    def denoise(self, z_ref: torch.Tensor, z_low: torch.Tensor | None, reference: torch.Tensor,
                num_inference_steps: int = 25, guidance_scale: float = 1.0,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """Plan once (``z_low`` None: the null plan), then denoise the frames ``reference`` leaves unknown."""
        plan = None if z_low is None else self.planner(z_low, reference).plan  # (B, T, h', w', D)
        guided = plan is not None and guidance_scale != 1.0
        if guided:
            plan = torch.cat([plan, self.transformer.unconditional_plan(*plan.shape[:4])])
        generate = ~reference[:, None, :, None, None]
        noise = torch.randn(z_ref.shape, generator=generator, dtype=torch.float32).to(z_ref.device, z_ref.dtype)
        latents = torch.where(generate, noise, z_ref)
        self.scheduler.set_timesteps(num_inference_steps, device=z_ref.device)
        with self.progress_bar(total=num_inference_steps) as progress_bar:
            for t in self.scheduler.timesteps:
                timestep = self.transformer.timesteps(t, reference)  # (B, T): known frames are clean
                if guided:
                    velocity = self.transformer(torch.cat([latents] * 2), torch.cat([timestep] * 2), plan,
                                              torch.cat([reference] * 2)).sample
                    conditional, unconditional = velocity.chunk(2)
                    velocity = unconditional + guidance_scale * (conditional - unconditional)
                else:
                    velocity = self.transformer(latents, timestep, plan, reference).sample
                latents = self.scheduler.step(velocity, t, latents).prev_sample
                latents = torch.where(generate, latents, z_ref)
                progress_bar.update()
        return latents

    def interpolate(self, first: torch.Tensor, last: torch.Tensor, num_frames: int = WINDOW,
                    **kwargs) -> MaskedVideoPipelineOutput:
        """The ``num_frames - 2`` frames between two images ``(3, H, W)`` or ``(B, 3, H, W)``."""
        if first.shape != last.shape:
            raise ShapeError(f"the two images differ in size: {tuple(first.shape)} and {tuple(last.shape)}")
        return self(torch.stack([first, last], -3), [0, num_frames - 1], num_frames, **kwargs)

    def animate(self, image: torch.Tensor, num_frames: int = WINDOW, at: int = 0, **kwargs
                ) -> MaskedVideoPipelineOutput:
        """Image-to-video: ``image`` ``(3, H, W)`` or ``(B, 3, H, W)`` becomes frame ``at`` of the clip."""
        kwargs.setdefault("guidance_scale", I2V_GUIDANCE)
        return self(image.unsqueeze(-3), [at], num_frames, **kwargs)

    def extend(self, video: torch.Tensor, add: int, context: int = 5, window: int = WINDOW, **kwargs
               ) -> MaskedVideoPipelineOutput:
        """Expansion: ``add`` new frames after ``video`` ``(3, T, H, W)`` or ``(B, 3, T, H, W)``, each window
        conditioned on the last ``context`` frames so far (autoregressive when ``add`` exceeds a window)."""
        video = video if video.ndim == 5 else video[None]
        if add < 1:
            raise ShapeError(f"add at least one frame (got --add {add})")
        context = min(context, video.shape[2], window - 1)
        clip = video
        while clip.shape[2] < video.shape[2] + add:
            new = min(window - context, video.shape[2] + add - clip.shape[2])
            out = self(clip[:, :, -context:], list(range(context)), context + new, **kwargs).frames
            clip = torch.cat([clip, out[:, :, context:].to(clip.dtype)], 2)
        return MaskedVideoPipelineOutput(frames=clip)

    def long(self, known: torch.Tensor, indices: list[int], num_frames: int, window: int = WINDOW,
             **kwargs) -> MaskedVideoPipelineOutput:
        """Hierarchical generation of ``num_frames`` frames (MarDini section 3): a first pass makes ``window``
        key frames spread over the clip (the known frames that fall on them kept), then each gap between
        consecutive key frames is interpolated, recursively while a gap exceeds a window."""
        known = self.check_frames(known, list(indices), num_frames)
        frames = dict(zip(indices, known.unbind(2), strict=True))  # position -> (B, 3, H, W)
        self._fill(frames, 0, num_frames - 1, window, kwargs)
        return MaskedVideoPipelineOutput(frames=torch.stack([frames[i] for i in range(num_frames)], 2))

    def _fill(self, frames: dict, start: int, end: int, window: int, kwargs: dict) -> None:
        """Generate every missing frame of positions ``start..end`` given the ones in ``frames``."""
        slots = key_frame_slots(start, end, window, [p for p in frames if start <= p <= end])
        known = [i for i, p in enumerate(slots) if p in frames]
        if len(known) < len(slots):
            out = self(torch.stack([frames[slots[i]] for i in known], 2), known, len(slots), **kwargs).frames
            for i, position in enumerate(slots):
                frames.setdefault(position, out[:, :, i].to(frames[slots[known[0]]].dtype))
        for a, b in zip(slots, slots[1:], strict=False):
            if b - a > 1:
                self._fill(frames, a, b, window, kwargs)


def key_frame_slots(start: int, end: int, window: int, known: list[int]) -> list[int]:
    """The positions of ``start..end`` one pass generates: all of them if they fit in ``window``, else
    ``window`` key frames spread evenly from ``start`` to ``end``, a known frame taking the place of an
    interior key frame within half a stride of it (and of the nearest one if no key frame is known).

    >>> key_frame_slots(0, 32, 9, [0])
    [0, 4, 8, 12, 16, 20, 24, 28, 32]
    >>> key_frame_slots(0, 32, 9, [0, 1, 2, 3, 4, 5, 6])      # expansion: the video's frames 0, 4 and 6 condition
    [0, 4, 6, 12, 16, 20, 24, 28, 32]
    >>> key_frame_slots(0, 32, 9, [1])
    [0, 1, 8, 12, 16, 20, 24, 28, 32]
    """
    if end - start + 1 <= window:
        return list(range(start, end + 1))
    slots = sorted({round(x) for x in np.linspace(start, end, window)})
    half_stride = (end - start) / (window - 1) / 2
    known_set = set(known)
    for p in sorted(known):
        if p in slots:
            continue
        free = [i for i in range(1, len(slots) - 1) if slots[i] not in known_set]
        if not free:
            break
        i = min(free, key=lambda i: abs(slots[i] - p))
        if abs(slots[i] - p) <= half_stride or not known_set & set(slots):
            slots[i] = p
    return sorted(set(slots))


def tiny_masked_pipeline(seed: int = 0) -> MaskedVideoPipeline:
    """A randomly initialised pipeline of tiny models (tests, doctests)."""
    from reelkit.mardini import MarDiniGenerator, MarDiniPlanner
    from reelkit.vae.image_vae import build_image_vae

    torch.manual_seed(seed)
    planner = MarDiniPlanner(num_layers=1, num_attention_heads=2, attention_head_dim=8).eval()
    generator = MarDiniGenerator(num_layers=1, num_attention_heads=2, attention_head_dim=8, plan_dim=16,
                                 sample_size=4).eval()
    vae = build_image_vae(block_out_channels=(8, 8, 8, 8), norm_num_groups=4).eval()
    pipe = MaskedVideoPipeline(planner, generator, vae, default_scheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_masked_video_pipeline(planner, transformer, destination: str | Path, planner_scale: int = 2) -> Path:
    """Write a pipeline folder (planner, transformer: the generator network, scheduler; no VAE: loading adds the
    bundled image VAE)."""
    from reelkit.loading import save_pipeline_without_vae
    from reelkit.vae.image_vae import load_image_vae

    pipe = MaskedVideoPipeline(planner, transformer, load_image_vae(), default_scheduler(), planner_scale)
    return save_pipeline_without_vae(pipe, destination)


def _load_generator_layout(path: Path, dtype: torch.dtype, extra: dict) -> MaskedVideoPipeline:
    """A folder saved when the generator network was the ``generator`` component, loaded part by part."""
    import json

    from reelkit.mardini import MarDiniGenerator, MarDiniPlanner
    from reelkit.vae.image_vae import load_image_vae

    index = json.loads((path / "model_index.json").read_text())
    vae = extra.get("vae") or load_image_vae(path / "vae", dtype=dtype)
    return MaskedVideoPipeline(MarDiniPlanner.from_pretrained(path / "planner", dtype=dtype),
                               MarDiniGenerator.from_pretrained(path / "generator", dtype=dtype), vae,
                               FlowMatchEulerDiscreteScheduler.from_pretrained(path / "scheduler"),
                               index.get("planner_scale", 2))


def load_masked_video(path: str | Path | None = None, vae=None, dtype: torch.dtype = torch.float32
                      ) -> MaskedVideoPipeline:
    """Load a saved MarDini pipeline folder, or the bundled one (``None`` or ``"mardini"``); a folder without
    a ``vae`` gets ``vae`` or the bundled image VAE it names (``recorded_vae_name``)."""
    import reelkit.mardini  # noqa: F401  (diffusers loads only components of modules already imported)
    from reelkit.loading import recorded_vae_name
    from reelkit.vae.image_vae import load_image_vae

    path = ASSETS_DIR / BUNDLED if path in (None, BUNDLED) else Path(path)
    if not (path / "model_index.json").is_file():
        raise ReelkitError(f"{path}: not a MarDini pipeline folder (no model_index.json)")
    if vae is None and not (path / "vae").is_dir():
        vae = load_image_vae(recorded_vae_name(path, "image_vae"), dtype=dtype)
    extra = {"vae": vae} if vae is not None else {}
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()
    try:
        if (path / "generator").is_dir() and not (path / "transformer").is_dir():  # saved before the rename
            pipe = _load_generator_layout(path, dtype, extra)
        else:
            pipe = MaskedVideoPipeline.from_pretrained(path, dtype=dtype, **extra)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError, AttributeError) as error:
        raise ReelkitError(f"{path}: cannot load the pipeline ({' '.join(str(error).split())[:200]})") from None
    finally:
        diffusers_logging.enable_progress_bar()
    if not hasattr(pipe, "planner") or not hasattr(pipe, "transformer"):
        raise ReelkitError(f"{path}: not a MarDini pipeline (no planner and transformer)")
    from reelkit.loading import check_finite_weights

    for model in (pipe.planner, pipe.transformer, pipe.vae):
        check_finite_weights(model, path).eval()
    return pipe


__all__ = ["MaskedVideoPipeline", "MaskedVideoPipelineOutput", "load_masked_video", "save_masked_video_pipeline",
           "tiny_masked_pipeline"]
