"""The accelerators a user picks by name (the ``generate`` command line, the studio), applied to a pipeline in one
call and removed in one, so every front end composes them the same way.

>>> from reelkit.accel.options import AccelerationOptions, apply_acceleration, remove_acceleration
>>> from reelkit.pipelines.text_to_video import tiny_pipeline
>>> pipe = tiny_pipeline()
>>> applied = apply_acceleration(pipe, AccelerationOptions(cache="adacache-fast", moreg=True), steps=8)
>>> applied.describe()
'AdaCache (fast) + MoReg'
>>> remove_acceleration(pipe)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from reelkit.errors import ReelkitError

CACHE_PRESETS = {"adacache": "fast", "adacache-fast": "fast", "adacache-slow": "slow"}


@dataclass
class AccelerationOptions:
    """``cache``: an AdaCache preset name (``CACHE_PRESETS``) or None; ``codebook``: an AdaCache codebook file, or
    a :class:`~reelkit.accel.adacache.Codebook` (a tuned recipe's), which replaces the preset; ``moreg``: MoReg on
    AdaCache; ``rehash``: Step Rehash's full-step budget;
    ``rehash_schedule``: its key-step schedule file; ``slicing``: Feature Slicing (``"auto"``, a chunk count or a
    memory budget such as ``"2GiB"``); ``guidance_interval``: the lowest noise level that still runs
    classifier-free guidance (below it, one transformer call a step instead of two); ``guidance_reuse``: the noise
    level below which every other guided step reuses the last guidance difference instead of running the
    unconditional branch (so do Step Rehash's rehash steps, when it is on); ``vae_chunk_frames`` and ``vae_tile``:
    the CV-VAE decodes in temporal chunks of that many new frames (a multiple of 4) and spatial tiles of that many
    pixels (:mod:`reelkit.vae.chunking`: a lower decode peak, approximate across chunk borders)."""

    cache: str | None = None
    codebook: str | Path | object | None = None
    moreg: bool = False
    rehash: int | None = None
    rehash_schedule: str | Path | None = None
    slicing: str | None = None
    guidance_interval: float | None = None
    guidance_reuse: float | None = None
    vae_chunk_frames: int | None = None
    vae_tile: int | None = None


@dataclass
class AppliedAcceleration:
    cache: object | None = None  # the AdaCacheConfig applied
    rehash: object | None = None  # the StepRehashConfig applied
    slicing: object | None = None  # the SlicingConfig applied
    preset: str | None = None
    guidance_interval: float | None = None
    guidance_reuse: float | None = None
    chunking: object | None = None  # the ChunkingConfig applied to the VAE

    def describe(self) -> str:
        parts = []
        if self.cache is not None:
            parts.append(f"AdaCache ({self.preset or 'codebook'})" + (" + MoReg" if self.cache.moreg else ""))
        if self.rehash is not None:
            parts.append("Step Rehash")
        if self.slicing is not None:
            parts.append("Feature Slicing")
        if self.guidance_interval is not None:
            parts.append(f"guidance above sigma {self.guidance_interval:g}")
        if self.guidance_reuse is not None:
            parts.append(f"guidance reused below sigma {self.guidance_reuse:g}")
        if self.chunking is not None:
            parts.append(describe_chunking(self.chunking.frames_per_chunk, self.chunking.tile_size))
        return ", ".join(parts) or "none"


def describe_chunking(frames: int | None, tile: int | None) -> str:
    return f"VAE chunks of {frames or 16} frames" + (f" in {tile} px tiles" if tile else "")


def vae_chunking_config(frames: int | None, tile: int | None):
    """The :class:`~reelkit.vae.chunking.ChunkingConfig` those options ask for (16-frame chunks when only a tile is
    given), or None for a whole-clip decode; one-line errors otherwise."""
    from reelkit.vae.chunking import ChunkingConfig

    if frames is None and tile is None:
        return None
    if frames is not None and (frames < 4 or frames % 4):
        raise ReelkitError(f"--vae-chunk-frames must be a positive multiple of 4, got {frames}")
    if tile is not None and (tile < 16 or tile % 8):
        raise ReelkitError(f"--vae-tile must be a multiple of 8 and at least 16 (pixels), got {tile}")
    return ChunkingConfig(frames or 16, tile)


def ada_cache_config(cache: str | None, moreg: bool, codebook: str | Path | None):
    """The AdaCache configuration those options ask for, or None for no cache; one-line errors otherwise."""
    from reelkit.accel.adacache import AdaCacheConfig, Codebook

    if cache is None and codebook is None:
        if moreg:
            raise ReelkitError("--moreg needs --cache adacache (or --codebook)")
        return None
    if cache is not None and cache not in CACHE_PRESETS:
        raise ReelkitError(f"unknown --cache {cache!r}; choose one of {', '.join(CACHE_PRESETS)}")
    if codebook is None:
        return AdaCacheConfig(codebook=CACHE_PRESETS[cache], moreg=moreg)
    if cache not in (None, "adacache"):
        raise ReelkitError(f"--codebook replaces the {cache} preset; use --cache adacache or leave --cache out")
    if isinstance(codebook, Codebook):
        return AdaCacheConfig(codebook=codebook, moreg=moreg)
    codebook = Path(codebook)
    book = Codebook.load(codebook)
    centre = json.loads(codebook.read_text()).get("moreg_centre")
    return AdaCacheConfig(codebook=book, moreg=moreg, **({"moreg_centre": centre} if centre else {}))


def apply_acceleration(pipe, options: AccelerationOptions, steps: int, bundled_teacher: bool = True
                       ) -> AppliedAcceleration:
    """Apply the chosen accelerators to ``pipe`` (its transformer, and its VAE for Feature Slicing and chunking) for
    ``steps`` denoising steps; AdaCache and Step Rehash are two caches, so asking for both is an error."""
    from reelkit.accel.slicing import apply_feature_slicing, slicing_config_from_option
    from reelkit.accel.step_rehash import apply_step_rehash, config_from_options

    cache = ada_cache_config(options.cache, options.moreg, options.codebook)
    rehash = config_from_options(options.rehash, options.rehash_schedule, steps, bundled=bundled_teacher)
    if rehash is not None and cache is not None:
        raise ReelkitError("--rehash and --cache are two caches; choose one")
    slicing = slicing_config_from_option(options.slicing)
    chunking = vae_chunking_config(options.vae_chunk_frames, options.vae_tile)
    if chunking is not None and not hasattr(pipe.vae, "enable_chunking"):
        raise ReelkitError(f"{type(pipe.vae).__name__} cannot decode in chunks; VAE chunking needs a CV-VAE")
    low = options.guidance_interval
    if low is not None:
        check_guidance_interval(low)
        if not hasattr(pipe, "enable_guidance_interval"):
            raise ReelkitError(f"{type(pipe).__name__} has no classifier-free guidance to limit")
    reuse = options.guidance_reuse
    if reuse is not None:
        check_guidance_reuse(reuse)
        if not hasattr(pipe, "enable_guidance_reuse"):
            raise ReelkitError(f"{type(pipe).__name__} has no classifier-free guidance to reuse")
    if slicing is not None:
        apply_feature_slicing(pipe.transformer, slicing)
        apply_feature_slicing(pipe.vae, slicing)
    if chunking is not None:
        pipe.vae.enable_chunking(chunking.frames_per_chunk, chunking.tile_size, chunking.tile_overlap)
    if rehash is not None:
        apply_step_rehash(pipe.transformer, rehash)
    if cache is not None:
        from reelkit.accel.adacache import apply_ada_cache

        apply_ada_cache(pipe.transformer, cache)
    if low is not None:
        pipe.enable_guidance_interval(low)
    if reuse is not None:  # a rehash step reuses the deep features; it reuses the guidance difference too
        rehashed = set(range(steps)) - set(rehash.key_steps_for(steps)) if rehash is not None else ()
        pipe.enable_guidance_reuse(reuse, steps=rehashed)
    preset = CACHE_PRESETS.get(options.cache) if options.codebook is None else None
    return AppliedAcceleration(cache, rehash, slicing, preset, low, reuse, chunking)


def check_guidance_interval(low: float) -> None:
    """A one-line error unless ``low`` is a noise level strictly between 0 (clean) and 1 (pure noise)."""
    if not 0 < low < 1:
        raise ReelkitError(f"--guidance-interval is the lowest noise level that keeps guidance, in (0, 1); got {low:g}")


def check_guidance_reuse(below: float) -> None:
    """A one-line error unless ``below`` is a noise level in (0, 1]."""
    if not 0 < below <= 1:
        raise ReelkitError(f"--guidance-reuse is the noise level below which guidance is reused, in (0, 1]; "
                           f"got {below:g}")


def remove_acceleration(pipe) -> None:
    """Remove every accelerator :func:`apply_acceleration` may have applied; the pipeline is plain again."""
    from reelkit.accel.adacache import remove_ada_cache
    from reelkit.accel.slicing import remove_feature_slicing
    from reelkit.accel.step_rehash import remove_step_rehash

    remove_ada_cache(pipe.transformer)
    remove_step_rehash(pipe.transformer)
    remove_feature_slicing(pipe.transformer)
    remove_feature_slicing(pipe.vae)
    if hasattr(pipe.vae, "disable_chunking"):
        pipe.vae.disable_chunking()
    if hasattr(pipe, "disable_guidance_interval"):
        pipe.disable_guidance_interval()
    if hasattr(pipe, "disable_guidance_reuse"):
        pipe.disable_guidance_reuse()


def computed_and_reused(pipe) -> tuple[int, int] | None:
    """Computed and reused denoiser calls of the last generation over all cache contexts (AdaCache or Step
    Rehash), or None when neither is applied."""
    from reelkit.accel._diffusers_compat import hook_names

    names = hook_names(pipe.transformer)
    if any(name.startswith("ada_cache") for name in names):
        from reelkit.accel.adacache import ada_cache_stats

        stats = ada_cache_stats(pipe.transformer).values()
        return sum(sum(s.computed) for s in stats), sum(sum(s.reused) for s in stats)
    if any(name.startswith("step_rehash") for name in names):
        from reelkit.accel.step_rehash import step_rehash_stats

        stats = step_rehash_stats(pipe.transformer).values()
        return sum(len(s.full_steps) for s in stats), sum(len(s.rehash_steps) for s in stats)
    return None


__all__ = ["CACHE_PRESETS", "AccelerationOptions", "AppliedAcceleration", "ada_cache_config", "apply_acceleration",
           "check_guidance_interval", "check_guidance_reuse", "computed_and_reused", "describe_chunking",
           "remove_acceleration", "vae_chunking_config"]
