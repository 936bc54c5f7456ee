"""What every recipe shares: YAML configs checked against a dataclass, atomic accelerate checkpoints."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
from pathlib import Path

import yaml

from reelkit.errors import ReelkitError
from reelkit.files import atomic_path
from reelkit.loading import swap_in_folder

CHECKPOINT = "checkpoint"
TRAINER_STATE = "trainer_state.json"


def load_config(cls, path: str | Path, **overrides):
    """Read a YAML file into dataclass ``cls``, then apply ``overrides`` (``None`` values skipped; a dotted key
    such as ``"model.patch_size"`` sets a field of a nested options dict); unknown keys or values of the
    wrong type are a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise ReelkitError(f"{path}: no such config file")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ReelkitError(f"{path}: not valid YAML ({' '.join(str(error).split())[:160]})") from None
    if not isinstance(values, dict):
        raise ReelkitError(f"{path}: a config is a mapping of keys to values")
    for key, value in overrides.items():
        if value is not None:
            _set_dotted(values, key, value, path)
    if not values:
        raise ReelkitError(f"{path}: the config is empty; it needs at least the keys that differ from the defaults")
    import typing

    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ReelkitError(f"{path}: unknown config keys {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    for name, value in values.items():
        check_field(path, name, value, hints[name])
    try:
        return cls(**values)
    except TypeError as error:
        raise ReelkitError(f"{path}: {error}") from None


def _set_dotted(values: dict, key: str, value, path: Path) -> None:
    """``values[a][b] = value`` for the key ``"a.b"`` (a field of a nested options dict such as ``model``)."""
    *parents, leaf = key.split(".")
    target = values
    for part in parents:
        target = target.setdefault(part, {})
        if not isinstance(target, dict):
            raise ReelkitError(f"{path}: cannot set {key}: {part} is not a mapping of options")
    target[leaf] = value


def parse_overrides(pairs: list[str] | None) -> dict:
    """``["learning_rate=1e-3", "model.patch_size=4"]`` to ``{"learning_rate": 0.001, "model.patch_size": 4}``
    (values read as YAML, so numbers, booleans, ``null`` and lists work; ``1e-3`` reads as a number).

    >>> parse_overrides(["learning_rate=1e-3", "model.patch_size=4", "vae=null", "output_dir=runs/a"])
    {'learning_rate': 0.001, 'model.patch_size': 4, 'vae': None, 'output_dir': 'runs/a'}
    """
    parsed = {}
    for pair in pairs or []:
        key, sep, text = pair.partition("=")
        if not sep or not key or not all(part.isidentifier() for part in key.split(".")):
            raise ReelkitError(f"override '{pair}' is not key=value (e.g. learning_rate=1e-3 or model.patch_size=4)")
        try:
            value = yaml.safe_load(text) if text else ""
        except yaml.YAMLError:
            raise ReelkitError(f"override '{pair}': the value is not valid YAML") from None
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 as a string
            with contextlib.suppress(ValueError):
                value = float(value)
        parsed[key] = value
    return parsed


def build(factory, section: str, options: dict, **defaults):
    """``factory(**defaults, **options)`` for a config's nested options (``model``, ``text_encoder``, ...); an
    option the factory does not take is a one-line error naming it and the known ones."""
    import inspect

    parameters = inspect.signature(factory).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        unknown = sorted(set(options) - set(parameters))
        if unknown:
            known = ", ".join(name for name in parameters if name not in ("self", *defaults))
            raise ReelkitError(f"{section}: unknown option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} "
                               f"for {getattr(factory, '__name__', factory)}; known: {known}")
    return factory(**{**defaults, **options})


RANGES = {  # fields every recipe shares: (lowest, highest) allowed; None: unbounded
    "max_steps": (1, None), "save_every": (1, None), "log_every": (1, None), "batch_size": (1, None),
    "warmup_steps": (0, None), "learning_rate": (1e-12, 1.0), "time_limit_minutes": (0, None),
    "threads": (1, 1024), "seed": (0, 2**63 - 1), "grad_clip": (1e-12, None), "num_frames": (1, 4097),
    "size": (8, 4096), "ema_decay": (0.0, 1.0), "cache_size": (1, None),
}
"""Ranges checked wherever a config has the field (zero intervals would divide by zero or never save)."""


def check_field(path: Path, name: str, value, hint) -> None:
    """One config value against its dataclass type (``int``, ``float``, ``str``, ``bool``, ``list``, ``dict``,
    ``X | None``) and, for the shared fields, :data:`RANGES`; a one-line error otherwise."""
    import math
    import types
    import typing

    options = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union \
        else (hint,)
    if value is None:
        if type(None) not in options:
            raise ReelkitError(f"{path}: {name} may not be empty (null)")
        return
    bases = {typing.get_origin(o) or o for o in options if o is not type(None)}
    ok = any(
        (base is float and isinstance(value, int | float) and not isinstance(value, bool))
        or (base is int and isinstance(value, int) and not isinstance(value, bool))
        or (base in (str, bool, dict) and isinstance(value, base))
        or (base in (list, tuple) and isinstance(value, list | tuple))
        for base in bases) or not bases & {int, float, str, bool, dict, list, tuple}
    if not ok:
        wanted = " or ".join(sorted(getattr(b, "__name__", str(b)) for b in bases))
        raise ReelkitError(f"{path}: {name} must be {wanted}, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ReelkitError(f"{path}: {name} must be a finite number, got {value}")
    if name in RANGES and isinstance(value, int | float):
        low, high = RANGES[name]
        if value < low or (high is not None and value > high):
            bound = f">= {low}" if high is None else f"in [{low}, {high}]"
            raise ReelkitError(f"{path}: {name} must be {bound}, got {value}")


def save_checkpoint(accelerator, output_dir: Path, step: int, extra: dict | None = None) -> Path:
    """Save the full training state to ``output_dir/checkpoint`` atomically (write aside, then swap).

    A kill at any instant leaves at least one complete copy that :func:`recover_checkpoint` finds: the
    staged copy is complete once its ``trainer_state.json`` exists (written last, atomically), and the
    previous checkpoint is only deleted after the new one is in place."""
    final = output_dir / CHECKPOINT
    staging = output_dir / f".{CHECKPOINT}-{step}.tmp"
    retired = output_dir / f".{CHECKPOINT}-old"
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))
    if accelerator.is_main_process:
        with atomic_path(staging / TRAINER_STATE) as tmp:
            tmp.write_text(json.dumps({"step": step, **(extra or {})}))
        # a retired copy left by a kill during its deletion would block the rename below
        shutil.rmtree(retired, ignore_errors=True)
        if final.exists():
            final.rename(retired)
        staging.rename(final)
        shutil.rmtree(retired, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _saved_step(folder: Path) -> int | None:
    """The step of a complete checkpoint folder, ``None`` for a partial or foreign one."""
    try:
        return int(json.loads((folder / TRAINER_STATE).read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def recover_checkpoint(output_dir: Path) -> int | None:
    """Make ``output_dir/checkpoint`` the newest complete copy a killed save left behind (the staged
    ``.checkpoint-N.tmp`` or the retired ``.checkpoint-old``), delete partial copies, and return its step
    (``None``: no complete copy)."""
    final = output_dir / CHECKPOINT
    copies = [final, output_dir / f".{CHECKPOINT}-old", *output_dir.glob(f".{CHECKPOINT}-*.tmp")]
    complete = [(step, folder) for folder in copies if folder.is_dir()
                and (step := _saved_step(folder)) is not None]
    if not complete:
        return None
    step, newest = max(complete, key=lambda pair: (pair[0], pair[1] == final))
    if newest != final:
        if final.exists():
            aside = output_dir / f".{CHECKPOINT}-partial"
            shutil.rmtree(aside, ignore_errors=True)
            final.rename(aside)
        newest.rename(final)
    for folder in copies[1:] + [output_dir / f".{CHECKPOINT}-partial"]:
        if folder != newest:
            shutil.rmtree(folder, ignore_errors=True)
    return step


def load_checkpoint(accelerator, output_dir: Path, config=None) -> int:
    """Restore ``output_dir/checkpoint`` (recovering it from a killed save first) and return the step to
    continue from (0 if none). Once it is restored, ``config`` (if given) is recorded as the run's
    ``config.yaml``: a resume refused for a changed config leaves the run folder as it was."""
    if accelerator.is_main_process and output_dir.is_dir():
        recover_checkpoint(output_dir)
    accelerator.wait_for_everyone()
    final = output_dir / CHECKPOINT
    step = _saved_step(final) if final.is_dir() else None
    if step is None:
        _record_config(accelerator, config, output_dir)
        return 0
    try:
        accelerator.load_state(str(final))
    except (RuntimeError, KeyError, ValueError) as error:
        raise ReelkitError(f"{final}: checkpoint does not match this config ({' '.join(str(error).split())[:200]})"
                           ) from None
    _record_config(accelerator, config, output_dir)
    return step


def _record_config(accelerator, config, output_dir: Path) -> None:
    if config is not None and accelerator.is_main_process:
        with atomic_path(output_dir / "config.yaml") as tmp:
            tmp.write_text(yaml.safe_dump(dataclasses.asdict(config), sort_keys=False))


def architecture_differences(fresh, loaded, ignore: tuple[str, ...] = ("scaling_factor", "shift_factor",
                                                                       "sample_size", "force_upcast")) -> str:
    """How a loaded model's config differs from a freshly built one's (up to three keys, ``""`` if it does
    not): what a warm start (``init_from``) checks before it takes the loaded weights."""
    differ = sorted(k for k, v in fresh.config.items()
                    if not k.startswith("_") and k not in ignore and loaded.config.get(k) != v)
    if type(loaded) is not type(fresh) and not differ:
        return type(loaded).__name__
    return ", ".join(f"{k} {loaded.config.get(k)!r} (config: {fresh.config[k]!r})" for k in differ[:3])




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
    return swap_in_folder(staging, destination)


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
    return swap_in_folder(staging, destination)


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
    is no CUDA; ``kwargs_handlers`` passed on), the seed (offset per process), and ``output_dir``
    (:func:`load_checkpoint` records the run's ``config.yaml`` once a resume is accepted). Returns
    ``(accelerator, output_dir)``."""
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
    """``output_dir/loss.csv`` with ``header`` (kept when resuming); reports a resume from ``step`` and
    drops the rows logged after it (a killed run's steps since its last checkpoint are run again)."""
    if step:
        accelerator.print(f"resumed from {output_dir / CHECKPOINT} at step {step}")
    csv_path = output_dir / "loss.csv"
    if accelerator.is_main_process:
        start_csv_log(csv_path, header, step)
    return csv_path


def start_csv_log(csv_path: Path, header: str, step: int) -> Path:
    """A CSV log whose first column is the step: created with ``header``, or, when resuming from ``step``,
    cut back to the rows up to it, so no step is ever logged twice."""
    lines = csv_path.read_text().splitlines() if csv_path.exists() else []
    if not lines or lines[0] == header:
        kept = [header] + [line for line in lines[1:] if _logged_step(line) <= step]
        if kept != lines:
            with atomic_path(csv_path) as tmp:
                tmp.write_text("\n".join(kept) + "\n")
    return csv_path


def _logged_step(line: str) -> float:
    try:
        return int(line.split(",", 1)[0])
    except ValueError:
        return float("inf")  # a torn last line from a kill: dropped


def apply_gradients(accelerator, loss, parameters, optimizer, scheduler=None, max_norm: float = 1.0) -> None:
    """One optimiser step on ``loss``: clear, backward (accelerate scales and syncs), clip to ``max_norm``,
    step the optimiser and the learning-rate schedule."""
    optimizer.zero_grad()
    accelerator.backward(loss)
    accelerator.clip_grad_norm_(parameters, max_norm)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
