"""What every recipe shares: YAML configs checked against a dataclass, atomic accelerate checkpoints."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import yaml

from reelkit.errors import ReelkitError

CHECKPOINT = "checkpoint"


def load_config(cls, path: str | Path, **overrides):
    """Read a YAML file into dataclass ``cls``; unknown or missing keys are a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise ReelkitError(f"{path}: no such config file")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ReelkitError(f"{path}: not valid YAML ({' '.join(str(error).split())[:160]})") from None
    if not isinstance(values, dict):
        raise ReelkitError(f"{path}: a config is a mapping of keys to values")
    values.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ReelkitError(f"{path}: unknown config keys {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    try:
        return cls(**values)
    except TypeError as error:
        raise ReelkitError(f"{path}: {error}") from None


def save_checkpoint(accelerator, output_dir: Path, step: int, extra: dict | None = None) -> Path:
    """Save the full training state to ``output_dir/checkpoint`` atomically (write aside, then swap)."""
    final = output_dir / CHECKPOINT
    staging = output_dir / f".{CHECKPOINT}-{step}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))
    if accelerator.is_main_process:
        (staging / "trainer_state.json").write_text(json.dumps({"step": step, **(extra or {})}))
        retired = output_dir / f".{CHECKPOINT}-old"
        if final.exists():
            final.rename(retired)
        staging.rename(final)
        shutil.rmtree(retired, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, output_dir: Path) -> int:
    """Restore ``output_dir/checkpoint`` if present; return the step to continue from (0 if none)."""
    final = output_dir / CHECKPOINT
    if not (final / "trainer_state.json").is_file():
        return 0
    try:
        accelerator.load_state(str(final))
    except (RuntimeError, KeyError, ValueError) as error:
        raise ReelkitError(f"{final}: checkpoint does not match this config ({' '.join(str(error).split())[:200]})"
                           ) from None
    return int(json.loads((final / "trainer_state.json").read_text())["step"])


def export_fp16(model_cls, source: str | Path, destination: str | Path) -> Path:
    """Re-save a trained model folder as fp16 safetensors (the bundled-asset format), replacing
    ``destination`` in place only once the new copy is complete."""
    import torch

    source, destination = Path(source), Path(destination)
    if not (source / "config.json").is_file():
        raise ReelkitError(f"{source}: not a model folder (no config.json)")
    model = model_cls.from_pretrained(source, torch_dtype=torch.float16)
    staging = destination.with_name(f".{destination.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging, safe_serialization=True)
    for file in staging.iterdir():
        file.chmod(0o644)  # package data must be readable by every user
    retired = destination.with_name(f".{destination.name}.old")
    if destination.exists():
        destination.rename(retired)
    staging.rename(destination)
    shutil.rmtree(retired, ignore_errors=True)
    return destination
