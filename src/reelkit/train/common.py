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


def _swap_in(staging: Path, destination: Path) -> Path:
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
    """Save a text-to-video pipeline folder atomically, without its ``vae`` (``load_text_to_video`` adds the
    bundled CV-VAE, or the one it is given)."""
    destination = Path(destination)
    staging = destination.with_name(f".{destination.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    pipe.save_pretrained(staging)
    shutil.rmtree(staging / "vae")
    return _swap_in(staging, destination)


def export_fp16(model_cls, source: str | Path, destination: str | Path) -> Path:
    """Re-save a trained model folder as fp16 safetensors (the bundled-asset format), replacing
    ``destination`` in place only once the new copy is complete."""
    import torch

    source, destination = Path(source), Path(destination)
    if not (source / "config.json").is_file():
        raise ReelkitError(f"{source}: not a model folder (no config.json)")
    model = model_cls.from_pretrained(source, dtype=torch.float16)
    staging = destination.with_name(f".{destination.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging, safe_serialization=True)
    return _swap_in(staging, destination)


def export_pipeline_fp16(source: str | Path, destination: str | Path) -> Path:
    """Re-save a saved pipeline folder with its networks in fp16 (tokenizer, scheduler, index copied);
    components the folder does not hold (the bundled teacher has no ``vae``) stay absent."""
    import importlib

    import torch
    from diffusers import ModelMixin

    source, destination = Path(source), Path(destination)
    index = json.loads((source / "model_index.json").read_text())
    staging = destination.with_name(f".{destination.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    shutil.copy2(source / "model_index.json", staging / "model_index.json")
    for name, spec in index.items():
        if name.startswith("_") or not (source / name).is_dir():
            continue
        library, class_name = spec
        cls = getattr(importlib.import_module(library), class_name) if library.split(".")[0] == "reelkit" else None
        if cls is not None and issubclass(cls, ModelMixin):
            cls.from_pretrained(source / name, dtype=torch.float16).save_pretrained(staging / name)
        else:
            shutil.copytree(source / name, staging / name)
    return _swap_in(staging, destination)


MIXED_PRECISION = ("no", "bf16")


def check_mixed_precision(value: str) -> str:
    if value not in MIXED_PRECISION:
        raise ReelkitError(f"mixed_precision must be one of {', '.join(MIXED_PRECISION)}, got {value!r}")
    return value


def autocast(mixed_precision: str, device):
    """The forward-pass context of a recipe: bf16 autocast when asked (4x faster matmuls and convs on CPUs
    with avx512_bf16 or AMX). Attention then takes the math path, whose bf16 backward is fast on CPU
    where the fused CPU kernel's is not."""
    from contextlib import ExitStack

    from torch.nn.attention import SDPBackend, sdpa_kernel

    stack = ExitStack()
    if mixed_precision == "bf16":
        import torch

        stack.enter_context(torch.autocast(device.type, torch.bfloat16))
        if device.type == "cpu":
            stack.enter_context(sdpa_kernel(SDPBackend.MATH))
    return stack


def start_run(config, kwargs_handlers=None):
    """The opening every recipe shares: threads, an ``Accelerator`` (gloo across CPU processes when there
    is no CUDA; ``kwargs_handlers`` passed on), the seed (offset per process), and ``output_dir`` with the
    run's ``config.yaml``. Returns ``(accelerator, output_dir)``."""
    import dataclasses

    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    if config.threads:
        torch.set_num_threads(config.threads)
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), kwargs_handlers=kwargs_handlers)
    set_seed(config.seed, device_specific=True)
    output_dir = Path(config.output_dir)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "config.yaml").write_text(yaml.safe_dump(dataclasses.asdict(config), sort_keys=False))
    return accelerator, output_dir


class StepClock:
    """Seconds per step over each logging window, and the run's time limit."""

    def __init__(self, time_limit_minutes: float | None):
        import time

        self._now = time.monotonic
        self.started = self.tick = self._now()
        self.window = 0
        self.time_limit_minutes = time_limit_minutes

    def step(self) -> None:
        self.window += 1

    def seconds_per_step(self) -> float:
        """Mean over the steps since the last call."""
        now = self._now()
        value = (now - self.tick) / max(self.window, 1)
        self.tick, self.window = now, 0
        return value

    def out_of_time(self) -> bool:
        return self.time_limit_minutes is not None and self._now() - self.started > 60 * self.time_limit_minutes


def checkpoint_when_due(accelerator, config, output_dir: Path, step: int, clock: StepClock) -> tuple[bool, bool]:
    """Checkpoint every ``save_every`` steps, at ``max_steps`` and when the time limit is reached.

    Returns ``(saved, stop)``; ``stop`` is true once the time limit ends the run."""
    stop = clock.out_of_time()
    saved = step % config.save_every == 0 or step == config.max_steps or stop
    if saved:
        save_checkpoint(accelerator, output_dir, step)
    if stop:
        accelerator.print(f"time limit of {config.time_limit_minutes} min reached at step {step}")
    return saved, stop


def endless(loader):
    """Batches from ``loader`` forever, telling a distributed sampler each new epoch (a fresh shuffle)."""
    epoch = 0
    while True:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def start_loss_log(accelerator, output_dir: Path, header: str, step: int) -> Path:
    """``output_dir/loss.csv`` with ``header`` (kept when resuming); reports a resume from ``step``."""
    if step:
        accelerator.print(f"resumed from {output_dir / CHECKPOINT} at step {step}")
    csv_path = output_dir / "loss.csv"
    if accelerator.is_main_process and not csv_path.exists():
        csv_path.write_text(header + "\n")
    return csv_path


def apply_gradients(accelerator, loss, parameters, optimizer, scheduler=None, max_norm: float = 1.0) -> None:
    """One optimiser step on ``loss``: clear, backward (accelerate scales and syncs), clip to ``max_norm``,
    step the optimiser and the learning-rate schedule."""
    optimizer.zero_grad()
    accelerator.backward(loss)
    accelerator.clip_grad_norm_(parameters, max_norm)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
