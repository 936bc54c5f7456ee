"""Step Rehash's configuration and hooks: the step-aware model hook that decides key or rehash steps, the deep
part's hooks that skip and re-inject, and apply / remove / stats."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from reelkit.accel import step_hooks
from reelkit.accel._diffusers_compat import (
    CacheContext,
    ModelHook,
    register_hook,
)
from reelkit.accel.step_rehash.schedule import RehashSchedule, StepRehashError, bundled_schedule_path, uniform_key_steps

_MODEL_HOOK = "step_rehash_model"
_DEEP_HOOK = "step_rehash_deep"
_PROBE_HOOK = "step_rehash_probe"
_OWN_HOOKS = (_MODEL_HOOK, _DEEP_HOOK, _PROBE_HOOK)
FALLBACK_CONTEXT = "step_rehash"  # used when the pipeline calls the model outside any cache_context
MAX_PROBE_ELEMENTS = 1 << 16  # recorded features are strided down to this many values (cosine survives it)



@dataclass
class StepRehashConfig:
    """Which steps are key steps and where the model is split into shallow and deep parts.

    Attributes:
        key_steps: explicit key steps (step 0 is always added). Overrides the two below.
        num_full_steps: the budget ``K`` of full steps. With ``schedule``, the key steps come from its
            similarity profile (Algorithm 1); without, they are uniform (the DeepCache baseline).
        schedule: a :class:`RehashSchedule` (or the path of one) from :func:`calibrate_step_rehash`.
            With neither ``key_steps`` nor ``num_full_steps`` nor ``schedule``, every step is a key step:
            the model computes exactly as without Step Rehash (used to calibrate).
        num_inference_steps: step count for pipelines that do not pass it to ``cache_context``.
        shallow_blocks: DiT: blocks always computed at the start and at the end (an int for both, or a
            ``(front, back)`` pair); the blocks in between are deep. U-Net: outer levels always computed.
            ``None``: one level of a U-Net; ``max(1, L // 8)`` blocks at each end of an ``L``-block DiT,
            fewer at the end where that would leave no deep block.
        similarity_feature: what calibration records: ``"deep"`` (the stored deep feature, the quantity a
            rehash step reuses; the default) or ``"temporal"`` (the paper's choice: the last deep block's
            temporal attention output; U-Nets: the injected feature, whose last layers are temporal).
        metric: the similarity the search reads from the schedule: ``"distance"`` (one minus the relative
            distance between features; the default, it tracks the error a rehash step makes) or ``"cosine"``
            (the paper's).
        search: ``"optimal"`` (keys that maximise the summed similarity of each step to its key; the
            default) or ``"greedy"`` (the paper's Algorithm 1, a bisected threshold).
        compute_last: spend one of the budget on the last step (searched schedules).
    """

    key_steps: Sequence[int] | None = None
    num_full_steps: int | None = None
    schedule: RehashSchedule | str | Path | None = None
    num_inference_steps: int | None = None
    shallow_blocks: int | tuple[int, int] | None = None
    similarity_feature: Literal["temporal", "deep"] = "deep"
    metric: Literal["distance", "cosine"] = "distance"
    search: Literal["optimal", "greedy"] = "optimal"
    compute_last: bool = False

    def __post_init__(self):
        if self.schedule is not None and not isinstance(self.schedule, RehashSchedule):
            self.schedule = RehashSchedule.load(self.schedule)
        if self.key_steps is not None:
            steps = sorted({int(s) for s in self.key_steps} | {0})
            if steps[0] < 0:
                raise StepRehashError(f"key steps must be >= 0, got {list(self.key_steps)}")
            self.key_steps = tuple(steps)
        if self.num_full_steps is not None and (not isinstance(self.num_full_steps, int) or self.num_full_steps < 1):
            raise StepRehashError(f"num_full_steps must be a whole number >= 1, got {self.num_full_steps!r}")
        if self.num_inference_steps is not None:
            if self.num_inference_steps < 1:
                raise StepRehashError(f"num_inference_steps must be >= 1, got {self.num_inference_steps}")
            self.key_steps_for(self.num_inference_steps)  # validates the budget against the step count
        if isinstance(self.shallow_blocks, list):
            self.shallow_blocks = tuple(self.shallow_blocks)
        shallow = self.shallow_blocks if isinstance(self.shallow_blocks, tuple) else (self.shallow_blocks or 0,) * 2
        if len(shallow) != 2 or any(not isinstance(s, int) or s < 0 for s in shallow):
            raise StepRehashError(f"shallow_blocks is a count >= 0 or a (front, back) pair, got {self.shallow_blocks}")
        if self.similarity_feature not in ("temporal", "deep"):
            raise StepRehashError(f"similarity_feature must be 'temporal' or 'deep', got {self.similarity_feature!r}")
        if self.metric not in ("distance", "cosine"):
            raise StepRehashError(f"metric must be 'distance' or 'cosine', got {self.metric!r}")
        if self.search not in ("optimal", "greedy"):
            raise StepRehashError(f"search must be 'optimal' or 'greedy', got {self.search!r}")

    @property
    def every_step(self) -> bool:
        return self.key_steps is None and self.num_full_steps is None and self.schedule is None

    def key_steps_for(self, num_steps: int) -> list[int]:
        """The key steps of a generation of ``num_steps`` steps."""
        if self.key_steps is not None:
            if self.key_steps[-1] >= num_steps:
                raise StepRehashError(f"key step {self.key_steps[-1]} is beyond a {num_steps}-step generation")
            return list(self.key_steps)
        if self.schedule is not None:
            return self.schedule.key_steps_for(self.num_full_steps, num_steps, self.compute_last, self.metric,
                                               self.search)
        if self.num_full_steps is not None:
            return uniform_key_steps(num_steps, self.num_full_steps)
        return list(range(num_steps))


def config_from_options(num_full_steps: int | None, schedule: str | Path | None, num_inference_steps: int,
                        bundled: bool) -> StepRehashConfig | None:
    """The configuration ``reelkit generate --rehash K [--rehash-schedule FILE]`` asks for, or None.

    The bundled teacher uses its bundled profile; other models without a schedule get uniform key steps."""
    if num_full_steps is None and schedule is None:
        return None
    if num_full_steps is not None and not 1 <= num_full_steps <= num_inference_steps:
        raise StepRehashError(f"--rehash must be between 1 and the number of steps ({num_inference_steps}), got "
                              f"{num_full_steps}")
    if schedule is None and bundled and bundled_schedule_path().is_file():
        schedule = bundled_schedule_path()
    loaded = RehashSchedule.load(schedule) if schedule is not None else None
    settings = {}
    if loaded is not None:
        loaded.key_steps_for(num_full_steps, num_inference_steps, **settings)  # fails early if it cannot be mapped
        settings = {k: loaded.metadata[k] for k in ("compute_last", "metric", "search") if k in loaded.metadata}
        if "shallow_blocks" in loaded.metadata:
            value = loaded.metadata["shallow_blocks"]
            settings["shallow_blocks"] = tuple(value) if isinstance(value, list) else value
    return StepRehashConfig(num_full_steps=num_full_steps, schedule=loaded, num_inference_steps=num_inference_steps,
                            **settings)


@dataclass
class StepRehashStats:
    """Full (key) and rehash steps of the last generation in one cache context."""

    full_steps: tuple[int, ...]
    rehash_steps: tuple[int, ...]

    @property
    def num_steps(self) -> int:
        return len(self.full_steps) + len(self.rehash_steps)


@dataclass
class _ContextState:
    step: int = -1
    feature: torch.Tensor | None = None  # the stored deep residual (DiT) or injected feature (U-Net)
    input_shape: tuple | None = None


@dataclass
class _Run:
    """What the model hook decided for the forward in flight; the part hooks read it."""

    state: _ContextState | None = None
    rehash: bool = False
    store: bool = True
    deep_input: torch.Tensor | None = None
    deep_feature: torch.Tensor | None = None
    probe: torch.Tensor | None = None


def _hidden(args, kwargs, name: str = "hidden_states") -> torch.Tensor:
    return kwargs[name] if name in kwargs else args[0]


class StepRehashModelHook(step_hooks.StepAwareModelHook):
    """Sits on the model's forward: decides key or rehash at each step of each cache context."""

    technique = "Step Rehash"
    fallback_context = FALLBACK_CONTEXT
    error = StepRehashError

    def __init__(self, config: StepRehashConfig, run: _Run, signature: inspect.Signature, hidden_argument: str):
        self.run = run
        self._keys: dict[int, frozenset[int]] = {}
        super().__init__(config, signature, hidden_argument)

    def reset_contexts(self) -> None:
        self.states: dict[str, _ContextState] = {}

    def key_steps(self, num_steps: int) -> frozenset[int]:
        if num_steps not in self._keys:
            self._keys[num_steps] = frozenset(self.config.key_steps_for(num_steps))
        return self._keys[num_steps]

    def begin(self, module: nn.Module, context: CacheContext, step: int, num_steps: int, arguments: dict) -> None:
        hidden = arguments[self.hidden_argument]
        state = self.states.setdefault(context.name, _ContextState())
        if step <= state.step or step == 0:  # a new generation: forget the stored feature
            state.feature, state.input_shape = None, None
            self.stats.pop(context.name, None)
        state.step = step
        shape = tuple(hidden.shape)
        key = step in self.key_steps(num_steps) or state.feature is None or state.input_shape != shape
        self.run.state, self.run.rehash = state, not key
        self.run.store = step < num_steps - 1  # nothing reads a feature stored at the last step
        if key:
            state.input_shape = shape
        self.stats.setdefault(context.name, {})[step] = key

    def finish(self, context: CacheContext, step: int, num_steps: int) -> None:
        run = self.run
        if self.trace is not None and not run.rehash:
            feature = run.probe if run.probe is not None else run.deep_feature
            if feature is not None:
                self.trace.append({"context": context.name, "step": step, "num_steps": num_steps,
                                   "feature": _summary(feature)})

    def end(self) -> None:
        run = self.run
        run.state = run.deep_input = run.deep_feature = run.probe = None
        run.rehash = False


def _summary(feature: torch.Tensor) -> torch.Tensor:
    flat = feature.detach().float().flatten()
    if flat.numel() > MAX_PROBE_ELEMENTS:
        flat = flat[:: -(-flat.numel() // MAX_PROBE_ELEMENTS)]
    return flat.cpu()


class _DiTDeepBlockHook(ModelHook):
    """A deep DiT block: runs on key steps (the first stores the deep input, the last the deep residual);
    on rehash steps passes the tokens through, and the last adds the stored residual."""

    def __init__(self, run: _Run, first: bool, last: bool, hidden_argument: str):
        super().__init__()
        self.run, self.first, self.last, self.hidden_argument = run, first, last, hidden_argument

    def new_forward(self, module: nn.Module, *args, **kwargs):
        run = self.run
        if run.state is None:  # called outside the hooked model's forward
            return self.fn_ref.original_forward(*args, **kwargs)
        hidden = _hidden(args, kwargs, self.hidden_argument)
        if run.rehash:
            return hidden + run.state.feature if self.last else hidden
        if self.first:
            run.deep_input = hidden
        output = self.fn_ref.original_forward(*args, **kwargs)
        if self.last:
            out = output if isinstance(output, torch.Tensor) else output[0]
            run.deep_feature = out - run.deep_input
            run.state.feature = run.deep_feature if run.store else None
        return output


class _UNetDeepHook(ModelHook):
    """A deep U-Net block. On rehash steps skipped blocks return placeholders of the right structure (their
    consumers are skipped too); the block feeding the first shallow up block returns the stored feature."""

    def __init__(self, run: _Run, kind: Literal["down", "mid", "up", "inject"], outputs: int = 0):
        super().__init__()
        self.run, self.kind, self.outputs = run, kind, outputs

    def new_forward(self, module: nn.Module, *args, **kwargs):
        run = self.run
        if run.state is None:
            return self.fn_ref.original_forward(*args, **kwargs)
        if not run.rehash:
            output = self.fn_ref.original_forward(*args, **kwargs)
            if self.kind == "inject":
                run.deep_feature = output
                run.state.feature = output if run.store else None
            return output
        if self.kind == "inject":
            return run.state.feature
        hidden = _hidden(args, kwargs)
        return (hidden, (hidden,) * self.outputs) if self.kind == "down" else hidden


class _ProbeHook(ModelHook):
    """Records the output of the layer whose similarity drives the key-step search (calibration only)."""

    def __init__(self, run: _Run, owner: StepRehashModelHook):
        super().__init__()
        self.run, self.owner = run, owner

    def post_forward(self, module, output):
        if self.owner.trace is not None and self.run.state is not None and not self.run.rehash:
            self.run.probe = output[0] if isinstance(output, tuple) else output
        return output


def _is_unet(model: nn.Module) -> bool:
    return all(isinstance(getattr(model, name, None), nn.Module) for name in ("down_blocks", "up_blocks", "mid_block"))


def _down_outputs(block: nn.Module) -> int:
    """How many skip tensors a down block returns: one per resnet, one per downsampler."""
    downsamplers = getattr(block, "downsamplers", None)
    return len(block.resnets) + (len(downsamplers) if downsamplers is not None else 0)


def _dit_shallow(shallow: int | tuple[int, int] | None, num_blocks: int) -> tuple[int, int]:
    if isinstance(shallow, tuple):
        return shallow
    if shallow is not None:
        return shallow, shallow
    front = back = max(1, num_blocks // 8)
    while front + back >= num_blocks and (front or back):
        back, front = (back - 1, front) if back else (back, front - 1)
    return front, back


def deep_part(model: nn.Module, config: StepRehashConfig | None = None) -> list[str]:
    """Qualified names of the modules a rehash step skips (the last one injects the stored feature)."""
    config = config or StepRehashConfig()
    if _is_unet(model):
        levels = config.shallow_blocks if not isinstance(config.shallow_blocks, tuple) else config.shallow_blocks[0]
        levels = 1 if levels is None else levels
        ups = len(model.up_blocks)
        if not 1 <= levels < ups:
            raise StepRehashError(f"shallow_blocks for a U-Net is the number of outer levels kept, 1 to {ups - 1}, "
                                  f"got {config.shallow_blocks}")
        return ([f"down_blocks.{i}" for i in range(levels, len(model.down_blocks))] + ["mid_block"]
                + [f"up_blocks.{i}" for i in range(ups - levels)])
    blocks = getattr(model, "transformer_blocks", None)
    if not isinstance(blocks, nn.ModuleList) or not len(blocks):
        raise StepRehashError(f"{type(model).__name__} is neither a DiT with transformer_blocks nor a U-Net with "
                              "down/mid/up blocks; Step Rehash cannot hook it")
    front, back = _dit_shallow(config.shallow_blocks, len(blocks))
    if front + back >= len(blocks):
        raise StepRehashError(f"shallow_blocks {config.shallow_blocks} leaves no deep block of {len(blocks)}")
    for block in blocks:
        metadata = step_hooks.block_metadata(type(block))
        if metadata is None or metadata.return_encoder_hidden_states_index is not None:
            raise StepRehashError(f"{type(block).__name__} blocks are not supported: Step Rehash needs blocks "
                                  "registered with diffusers' TransformerBlockRegistry that return only the tokens")
    return [f"transformer_blocks.{i}" for i in range(front, len(blocks) - back)]


def apply_step_rehash(model: nn.Module, config: StepRehashConfig | None = None) -> None:
    """Hook Step Rehash into ``model`` (a reelkit ``VideoDiT``, diffusers' SVD or AnimateDiff U-Net), in place.

    Raises :class:`StepRehashError` if the model has no deep part to skip, or if another cache (AdaCache,
    diffusers' or cache-dit's, or Step Rehash itself) is applied.
    """
    config = config or StepRehashConfig()
    step_hooks.refuse_to_stack(model, "_step_rehash_config", _OWN_HOOKS, "Step Rehash", "remove_step_rehash",
                               StepRehashError)
    deep = deep_part(model, config)
    modules = dict(model.named_modules())
    signature = step_hooks.forward_signature(model)
    hidden_argument = "sample" if "sample" in signature.parameters else "hidden_states"
    if hidden_argument not in signature.parameters:
        raise StepRehashError(f"{type(model).__name__}.forward has no 'sample' or 'hidden_states' argument")
    run = _Run()
    model_hook = StepRehashModelHook(config, run, signature, hidden_argument)
    register_hook(model, model_hook, _MODEL_HOOK)
    if _is_unet(model):
        for index, name in enumerate(deep):
            block = modules[name]
            kind = "inject" if index == len(deep) - 1 else name.split("_")[0]
            register_hook(block, _UNetDeepHook(run, kind, _down_outputs(block) if kind == "down" else 0), _DEEP_HOOK)
    else:
        metadata_name = step_hooks.block_metadata(type(modules[deep[0]])).hidden_states_argument_name
        for index, name in enumerate(deep):
            hook = _DiTDeepBlockHook(run, index == 0, index == len(deep) - 1, metadata_name)
            register_hook(modules[name], hook, _DEEP_HOOK)
        probe = getattr(modules[deep[-1]], "attn_temporal", None)
        if config.similarity_feature == "temporal" and isinstance(probe, nn.Module):
            register_hook(probe, _ProbeHook(run, model_hook), _PROBE_HOOK)
    step_hooks.claim(model, "_step_rehash_config", config)


def remove_step_rehash(model: nn.Module) -> None:
    """Remove Step Rehash's hooks and stored features; the model computes exactly as before."""
    step_hooks.uninstall(model, "_step_rehash_config", _OWN_HOOKS)


def _model_hook(model: nn.Module) -> StepRehashModelHook:
    return step_hooks.applied_hook(model, _MODEL_HOOK, "Step Rehash", StepRehashError)


def step_rehash_stats(model: nn.Module) -> dict[str, StepRehashStats]:
    """Full and rehash steps of the last (or current) generation, per cache context."""
    stats = {}
    for context, steps in _model_hook(model).stats.items():
        stats[context] = StepRehashStats(tuple(s for s in sorted(steps) if steps[s]),
                                         tuple(s for s in sorted(steps) if not steps[s]))
    return stats


def reset_step_rehash(model: nn.Module) -> None:
    """Forget the stored features and step counts (new generations also start afresh on their own)."""
    step_hooks.reset(model, _MODEL_HOOK, "Step Rehash", StepRehashError)


def format_stats(stats: dict[str, StepRehashStats]) -> str:
    """One line, e.g. ``step rehash: 15 full steps of 50 (key steps 0, 1, 2, 4, ...)``."""
    if not stats:
        return "step rehash: no generation yet"
    first = next(iter(stats.values()))
    return (f"step rehash: {len(first.full_steps)} full steps of {first.num_steps} "
            f"(key steps {', '.join(map(str, first.full_steps))})")


def record_rehash_features(model: nn.Module, enabled: bool = True) -> list[dict] | None:
    """Start (or stop) recording, at every key step, ``{"context", "step", "num_steps", "feature"}`` with
    the (flattened, CPU) feature the key-step search compares. Returns the list being filled. Under context
    parallelism each rank would record only its share of the feature: calibrate in one process."""
    from reelkit.parallel import parallel_group

    if enabled and parallel_group(model) is not None:
        raise StepRehashError("Step Rehash calibrates in one process (each rank holds a share of the features); "
                              "run 'reelkit calibrate rehash' without torchrun and use its schedule in parallel")
    hook = _model_hook(model)
    hook.trace = [] if enabled else None
    return hook.trace


def gram_from_trace(trace: Sequence[dict], num_steps: int) -> torch.Tensor:
    """The ``(num_steps, num_steps)`` Gram matrix of the recorded features, normalised by their mean squared
    norm, averaged over cache contexts and generations (a generation starts at step 0 of a context)."""
    runs: dict[tuple[str, int], dict[int, torch.Tensor]] = {}
    counters: dict[str, int] = {}
    for entry in trace:
        if entry["num_steps"] != num_steps:
            continue
        if entry["step"] == 0:
            counters[entry["context"]] = counters.get(entry["context"], 0) + 1
        runs.setdefault((entry["context"], counters.get(entry["context"], 0)), {})[entry["step"]] = entry["feature"]
    total, count = torch.zeros(num_steps, num_steps, dtype=torch.float64), 0
    for features in runs.values():
        if len(features) != num_steps:
            continue  # an interrupted or partly rehashed generation
        stacked = torch.stack([features[s] for s in range(num_steps)]).double()
        gram = stacked @ stacked.T
        total += gram / gram.diagonal().mean().clamp(min=1e-24)
        count += 1
    if not count:
        raise StepRehashError(f"no complete {num_steps}-step generation was recorded")
    return total / count


