"""A tuned recipe: the model, step count, guidance and accelerators ``reelkit tune`` chose, with what it measured.

A recipe is a small JSON file. It names the model it was tuned for by the transformer's class and a fingerprint
of its config and weights, so it is refused on another model. :func:`apply_recipe` puts its accelerators on a
pipeline and returns the step count and guidance to generate with.

>>> import tempfile
>>> from pathlib import Path
>>> from reelkit.accel.recipe import Recipe, apply_recipe, load_recipe, model_fingerprint
>>> from reelkit.pipelines.text_to_video import tiny_pipeline
>>> pipe = tiny_pipeline()
>>> recipe = Recipe(model="tiny", fingerprint=model_fingerprint(pipe.transformer), steps=8, guidance=4.0,
...                 cache="adacache-fast")
>>> path = recipe.save(Path(tempfile.mkdtemp()) / "recipe.json")
>>> steps, guidance = apply_recipe(pipe, load_recipe(path))
>>> steps, guidance
(8, 4.0)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch

from reelkit.accel.options import (
    AccelerationOptions,
    apply_acceleration,
    check_guidance_interval,
    check_guidance_reuse,
    describe_chunking,
    vae_chunking_config,
)
from reelkit.errors import ReelkitError
from reelkit.files import atomic_path

FORMAT = "reelkit-recipe/1"


class RecipeError(ReelkitError):
    """A recipe file that cannot be read or does not fit the model (one ``error:`` line on the command line)."""


@dataclass
class Recipe:
    """What to run: ``model`` (a bundled name or a folder), its ``fingerprint``, ``steps``, ``guidance`` and the
    accelerators (the names of :class:`reelkit.accel.options.AccelerationOptions`; ``codebook`` an AdaCache
    codebook the search calibrated, ``{"thresholds": [...], "rates": [...]}``, with ``cache``
    ``"adacache-calibrated"``); ``measured`` holds the search's and the held-out prompts' figures, ``targets``
    what was asked, ``machine`` where it was measured."""

    model: str
    fingerprint: str
    steps: int
    guidance: float
    cache: str | None = None
    moreg: bool = False
    rehash: int | None = None
    slicing: str | None = None
    guidance_interval: float | None = None
    guidance_reuse: float | None = None
    vae_chunk_frames: int | None = None
    vae_tile: int | None = None
    codebook: dict | None = None
    measured: dict = field(default_factory=dict)
    targets: dict = field(default_factory=dict)
    machine: dict = field(default_factory=dict)

    def options(self) -> AccelerationOptions:
        calibrated = self.codebook is not None  # the codebook replaces the cache preset
        return AccelerationOptions(cache=None if calibrated else self.cache,
                                   codebook=codebook_from_dict(self.codebook) if calibrated else None,
                                   moreg=self.moreg, rehash=self.rehash, slicing=self.slicing,
                                   guidance_interval=self.guidance_interval, guidance_reuse=self.guidance_reuse,
                                   vae_chunk_frames=self.vae_chunk_frames, vae_tile=self.vae_tile)

    def describe(self) -> str:
        parts = [f"{self.model}, {self.steps} steps, guidance {self.guidance:g}"]
        if self.cache:
            parts.append(self.cache + (" + MoReg" if self.moreg else ""))
        if self.rehash:
            parts.append(f"Step Rehash {self.rehash} full steps")
        if self.slicing:
            parts.append(f"Feature Slicing {self.slicing}")
        if self.guidance_interval:
            parts.append(f"guidance above sigma {self.guidance_interval:g}")
        if self.guidance_reuse:
            parts.append(f"guidance reused below sigma {self.guidance_reuse:g}")
        if self.vae_chunk_frames or self.vae_tile:
            parts.append(describe_chunking(self.vae_chunk_frames, self.vae_tile))
        return ", ".join(parts)

    def save(self, path: str | Path) -> Path:
        """Write the recipe as JSON, atomically (a failed write leaves any existing file as it was)."""
        path = Path(path)
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps({"format": FORMAT, **asdict(self)}, indent=1) + "\n")
        return path


def load_recipe(path: str | Path) -> Recipe:
    """Read a recipe file; a missing, corrupt or foreign file is a :class:`RecipeError`."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: no such recipe file")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RecipeError(f"{path}: not a recipe (not JSON); write one with 'reelkit tune'") from None
    if not isinstance(data, dict) or data.pop("format", None) != FORMAT:
        raise RecipeError(f"{path}: not a reelkit recipe (no format {FORMAT!r}); write one with 'reelkit tune'")
    known = {f.name for f in fields(Recipe)}
    try:
        recipe = Recipe(**{k: v for k, v in data.items() if k in known})
        if not (isinstance(recipe.steps, int) and recipe.steps >= 1 and float(recipe.guidance) >= 1):
            raise ValueError
        if recipe.guidance_interval is not None:
            check_guidance_interval(float(recipe.guidance_interval))
        if recipe.guidance_reuse is not None:
            check_guidance_reuse(float(recipe.guidance_reuse))
        if not all(v is None or isinstance(v, int) for v in (recipe.vae_chunk_frames, recipe.vae_tile)):
            raise ValueError
        vae_chunking_config(recipe.vae_chunk_frames, recipe.vae_tile)
        if recipe.codebook is not None:
            codebook_from_dict(recipe.codebook)
    except (TypeError, ValueError, KeyError, ReelkitError):
        raise RecipeError(f"{path}: a corrupt recipe (missing or invalid fields)") from None
    return recipe


def codebook_from_dict(data: dict):
    """The :class:`~reelkit.accel.adacache.Codebook` a recipe records as ``{"thresholds": [...], "rates": [...]}``."""
    from reelkit.accel.adacache import Codebook

    return Codebook(tuple(float(t) for t in data["thresholds"]), tuple(int(r) for r in data["rates"]))


def model_fingerprint(transformer: torch.nn.Module) -> str:
    """Class, config and a sample of the weights: the identity of the model a recipe was tuned on."""
    digest = hashlib.sha256(type(transformer).__name__.encode())
    config = {k: v for k, v in dict(getattr(transformer, "config", {})).items() if not k.startswith("_")}
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    for name, parameter in sorted(transformer.state_dict().items())[:8]:
        digest.update(name.encode())
        digest.update(parameter.detach().float().flatten()[:64].cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def check_recipe_model(pipe, recipe: Recipe) -> None:
    """A :class:`RecipeError` unless ``pipe`` holds the model ``recipe`` was tuned on."""
    found = model_fingerprint(pipe.transformer)
    if found != recipe.fingerprint:
        raise RecipeError(f"this recipe was tuned for another model ({recipe.model}, fingerprint "
                          f"{recipe.fingerprint}; this one is {found}); tune it again for this model")


def apply_recipe(pipe, recipe: Recipe, bundled_teacher: bool | None = None) -> tuple[int, float]:
    """Put the recipe's accelerators on ``pipe`` and return ``(steps, guidance)`` to generate with; a recipe tuned
    on another model is a :class:`RecipeError`."""
    check_recipe_model(pipe, recipe)
    if bundled_teacher is None:
        bundled_teacher = recipe.model == "teacher"
    apply_acceleration(pipe, recipe.options(), recipe.steps, bundled_teacher=bundled_teacher)
    return recipe.steps, float(recipe.guidance)


__all__ = ["FORMAT", "Recipe", "RecipeError", "apply_recipe", "check_recipe_model", "codebook_from_dict", "load_recipe",
           "model_fingerprint"]
