"""Load and save diffusers-layout model and pipeline folders (core): one-line errors for the wrong kind of
checkpoint, bundled names, and atomic folder swaps."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from reelkit.errors import ReelkitError
from reelkit.paths import ASSETS_DIR


def resolve_model_path(path: str | Path | None, bundled: str) -> Path:
    """``path``; ``None``: ``assets/<bundled>``; a bare name that is no folder here but a bundled one:
    that bundled folder."""
    path = Path(path) if path is not None else ASSETS_DIR / bundled
    if len(path.parts) == 1 and not path.exists() and (ASSETS_DIR / path).is_dir():
        path = ASSETS_DIR / path
    return path


def bundled_name(path: str | Path | None, default: str) -> str | None:
    """The bundled checkpoint's name when ``path`` (as :func:`resolve_model_path` reads it) is one, else None.

    >>> bundled_name(None, "cvvae"), bundled_name("cvvae_f4", "cvvae"), bundled_name("runs/my_vae", "cvvae")
    ('cvvae', 'cvvae_f4', None)
    """
    resolved = resolve_model_path(path, default).resolve()
    return resolved.name if resolved.parent == ASSETS_DIR.resolve() and resolved.is_dir() else None


def recorded_vae_name(folder: str | Path, default: str) -> str:
    """The bundled VAE a pipeline folder without a ``vae`` subfolder decodes with: ``_reelkit_vae`` in its
    ``model_index.json`` (written by :func:`reelkit.train.common.save_pipeline_without_vae`), else ``default``
    (folders saved before the name was recorded)."""
    try:
        index = json.loads((Path(folder) / "model_index.json").read_text())
    except (OSError, ValueError):
        raise ReelkitError(f"{folder}: cannot load the pipeline (model_index.json is unreadable or not JSON)"
                           ) from None
    name = index.get("_reelkit_vae", default) if isinstance(index, dict) else None
    if not isinstance(name, str) or not name or not (ASSETS_DIR / name).is_dir():
        raise ReelkitError(f"{folder}: names an unknown bundled VAE ({name!r}) in model_index.json")
    return name


def load_model(model_cls, path: str | Path | None, bundled: str, dtype: torch.dtype = torch.float32):
    """``model_cls.from_pretrained(path)``; ``path=None`` loads ``assets/<bundled>``, and a bare name that is
    no folder here but a bundled one (``"image_vae_f4"``) loads that bundled checkpoint.

    A folder without a config, a checkpoint of another class, or weights that do not fit the config raise
    :class:`ReelkitError` naming the folder.
    """
    path = resolve_model_path(path, bundled)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ReelkitError(f"{path}: not a {model_cls.__name__} folder (no config.json)")
    try:
        class_name = json.loads(config_file.read_text()).get("_class_name")
    except json.JSONDecodeError:
        raise ReelkitError(f"{config_file}: corrupt config (not JSON)") from None
    if class_name != model_cls.__name__:
        raise ReelkitError(f"{path}: is a {class_name} checkpoint, not a {model_cls.__name__} one")
    try:
        model = model_cls.from_pretrained(path, dtype=dtype)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as error:
        raise ReelkitError(f"{path}: checkpoint does not match its config ({' '.join(str(error).split())[:200]})"
                           ) from None
    model.bundled_name = bundled_name(path, bundled)  # a pipeline saved with it records the name, not a copy
    return check_finite_weights(model, path)


def check_finite_weights(model: torch.nn.Module, path: str | Path):
    """``model``, unless a weight holds NaN or infinity (a corrupt file): then a one-line error, rather than
    a black video later."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ReelkitError(f"{path}: weight {name} holds NaN or infinite values; the checkpoint is corrupt")
    return model


def swap_in_folder(staging: Path, destination: Path) -> Path:
    """Replace ``destination`` by the finished ``staging`` folder (package data: readable by everyone)."""
    for file in staging.rglob("*"):
        file.chmod(0o755 if file.is_dir() else 0o644)
    retired = destination.with_name(f".{destination.name}.old")
    if destination.exists():
        destination.rename(retired)
    staging.rename(destination)
    shutil.rmtree(retired, ignore_errors=True)
    return destination


def save_pipeline_without_vae(pipe, destination: str | Path) -> Path:
    """Save a pipeline folder atomically. When its VAE was loaded from a bundled checkpoint, the folder records
    that checkpoint's name (``_reelkit_vae`` in ``model_index.json``) instead of a copy of its weights, and the
    loaders add it back; any other VAE is saved in the folder."""
    destination = Path(destination)
    staging = destination.with_name(f".{destination.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    pipe.save_pretrained(staging)
    name = getattr(pipe.vae, "bundled_name", None)
    if name is not None:
        shutil.rmtree(staging / "vae")
        index_path = staging / "model_index.json"
        index_path.write_text(json.dumps({**json.loads(index_path.read_text()), "_reelkit_vae": name}, indent=2))
    return swap_in_folder(staging, destination)


__all__ = ["bundled_name", "check_finite_weights", "load_model", "recorded_vae_name", "resolve_model_path",
           "save_pipeline_without_vae", "swap_in_folder"]
