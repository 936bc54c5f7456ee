"""AdaCache's hooks: the per-generation schedule, the model hook that decides compute or reuse at each step,
the block hooks that cache residuals, and apply / remove / stats."""

from __future__ import annotations

import inspect
import itertools
from dataclasses import dataclass, field

import torch
from torch import nn

from reelkit.accel import step_hooks
from reelkit.accel._diffusers_compat import (
    BaseState,
    CacheContext,
    ModelHook,
    StateManager,
    TransformerBlockMetadata,
    get_hook,
    register_hook,
)
from reelkit.accel.adacache.config import AdaCacheConfig, AdaCacheError, Codebook
from reelkit.accel.adacache.models import AdaCacheModelSpec, cached_blocks, model_spec
from reelkit.parallel import all_gather_cat, all_reduce_sum, parallel_group

_MODEL_HOOK = "ada_cache_model"
_BLOCK_HOOK = "ada_cache_block"
_MONITOR_HOOK = "ada_cache_monitor"
_OWN_HOOKS = (_MODEL_HOOK, _BLOCK_HOOK, _MONITOR_HOOK)
FALLBACK_CONTEXT = "ada_cache"  # used when the pipeline calls the model outside any cache_context


# ------------------------------------------------------------------------------------------------ schedule


@dataclass
class AdaCacheStats:
    """Computed and reused steps of the last generation in one cache context, one entry per schedule row
    (one row, or one per video with ``per_sample=True``)."""

    computed: tuple[int, ...]
    reused: tuple[int, ...]
    computed_steps: tuple[tuple[int, ...], ...]


_GENERATIONS = itertools.count(1)


class _Schedule:
    """The reuse decisions of one schedule key ("shared" or a context name) for one generation, one row
    per video. Block states made for another generation are dropped when they meet a new schedule."""

    def __init__(self, rows: int, num_steps: int, codebook: Codebook):
        self.rows, self.num_steps, self.codebook = rows, num_steps, codebook
        self.generation = next(_GENERATIONS)
        self.step = -1
        self.rate = torch.ones(rows, dtype=torch.long)
        self.next_compute = torch.zeros(rows, dtype=torch.long)
        self.last_compute = torch.full((rows,), -1, dtype=torch.long)
        self.previous_compute = torch.full((rows,), -1, dtype=torch.long)
        self.active = torch.ones(rows, dtype=torch.bool)
        self.previous_motion_factor = torch.ones(rows)
        self._clear_observations()

    def _clear_observations(self):
        self.metric_sum = torch.zeros(self.rows)
        self.motion_sum = torch.zeros(self.rows)
        self.observations = torch.zeros(self.rows)
        self.motion_observations = torch.zeros(self.rows)

    def observe(self, rows: torch.Tensor, metric: torch.Tensor, motion: torch.Tensor | None) -> None:
        self.metric_sum += torch.where(rows, metric, 0.0)
        self.observations += rows.float()
        if motion is not None:
            self.motion_sum += torch.where(rows, motion, 0.0)
            self.motion_observations += rows.float()

    def advance(self, step: int, config: AdaCacheConfig, trace: list | None) -> None:
        observed = self.observations > 0
        if observed.any():
            metric = self.metric_sum / self.observations.clamp(min=1)  # c_t, averaged over monitors and branches
            if trace is not None:
                motion = self.motion_sum / self.motion_observations.clamp(min=1)
                trace.append({"step": self.step, "metric": metric.tolist(), "observed": observed.tolist(),
                              "motion": motion.tolist() if bool(self.motion_observations.any()) else None})
            if config.moreg:
                metric = metric * self._motion_factor(config, observed)
            new_rate = self.codebook.rates_for(metric)
            self.rate = torch.where(observed, new_rate, self.rate)
            self.next_compute = torch.where(observed, self.last_compute + self.rate, self.next_compute)
        self._clear_observations()
        self.step = step
        forced = step < config.compute_first or step >= self.num_steps - config.compute_last
        self.active = torch.full((self.rows,), forced) | (step >= self.next_compute)
        self.previous_compute = torch.where(self.active, self.last_compute, self.previous_compute)
        self.last_compute = torch.where(self.active, step, self.last_compute)
        self.next_compute = torch.where(self.active, step + self.rate, self.next_compute)

    def _motion_factor(self, config: AdaCacheConfig, observed: torch.Tensor) -> torch.Tensor:
        moving = observed & (self.motion_observations > 0)
        motion = self.motion_sum / self.motion_observations.clamp(min=1)
        low, high = config.moreg_window
        in_window = low <= self.step / self.num_steps <= high
        factor = (motion / config.moreg_centre) ** config.moreg_exponent / config.moreg_divisor
        factor = torch.where(moving, factor, 1.0) if in_window else torch.ones(self.rows)
        k = (self.last_compute - self.previous_compute).clamp(min=1)  # steps between the last two computes
        gradient = config.moreg_gradient_gain * (factor - self.previous_motion_factor) / k
        self.previous_motion_factor = torch.where(observed, factor, self.previous_motion_factor)
        return factor + gradient.abs()


@dataclass
class _Run:
    """What the model hook decided for the forward in flight; the block hooks read it."""

    schedule: _Schedule | None = None
    context: str = FALLBACK_CONTEXT
    batch: int = 1
    num_frames: int = 1
    step: int = 0
    captured: dict[str, torch.Tensor] = field(default_factory=dict)
    group: object | None = None  # the context-parallel process group the decisions are reduced over
    frames_local: bool = True  # under context parallelism, does each rank hold whole frame sequences?

    @property
    def active(self) -> torch.Tensor:
        return self.schedule.active

    @property
    def last_step(self) -> bool:
        return self.step >= self.schedule.num_steps - 1


class AdaCacheModelHook(step_hooks.StepAwareModelHook):
    """Sits on the model's forward: starts new generations and decides compute or reuse at each step."""

    technique = "AdaCache"
    fallback_context = FALLBACK_CONTEXT
    error = AdaCacheError

    def __init__(self, config: AdaCacheConfig, run: _Run, hidden_states_argument: str, spec: AdaCacheModelSpec,
                 signature: inspect.Signature):
        self.run, self.spec = run, spec
        super().__init__(config, signature, hidden_states_argument)
        # decisions of the last generation per context: step -> one bool per schedule row

    def reset_contexts(self) -> None:
        self.schedules: dict[str, _Schedule] = {}

    def end(self) -> None:
        self.run.captured.clear()

    def begin(self, module: nn.Module, context: CacheContext, step: int, num_steps: int, arguments: dict) -> None:
        config = self.config
        hidden_states = arguments[self.hidden_argument]
        batch = hidden_states.shape[0]
        rows = batch if config.per_sample else 1
        key = "shared" if config.cfg == "shared" else context.name
        schedule = self.schedules.get(key)
        if schedule is None or step < schedule.step or schedule.num_steps != num_steps:
            schedule = self.schedules[key] = _Schedule(rows, num_steps, config.codebook_for(num_steps))
            for name in ([context.name] if key != "shared" else list(self.stats)):
                self.stats.pop(name, None)
        elif schedule.rows != rows:
            raise AdaCacheError(f"the batch changed from {schedule.rows} to {rows} videos in the middle of a "
                                "generation with per_sample=True")
        if step > schedule.step:
            schedule.advance(step, config, self.trace)
        if step == 0:
            self.stats.pop(context.name, None)
        self.stats.setdefault(context.name, {})[step] = schedule.active.tolist()

        self.run.schedule, self.run.context, self.run.step, self.run.batch = schedule, context.name, step, batch
        self.run.group = parallel_group(module)
        self.run.frames_local = self.spec.frames_local_under_parallelism
        self.run.num_frames = int(self.spec.num_frames(module, hidden_states, arguments))


@dataclass
class _BlockState(BaseState):
    generation: int = -1
    residual: torch.Tensor | None = None
    encoder_residual: torch.Tensor | None = None
    output_template: tuple | None = None  # the block's last output tuple, for blocks returning several tensors
    monitor_previous: torch.Tensor | None = None
    monitor_step: torch.Tensor | None = None

    def reset(self, *args, **kwargs):
        self.__init__()


def _rows(x: torch.Tensor, batch: int) -> torch.Tensor:
    """``(L, ...)`` with batch-major leading dim ``L = batch * r`` -> ``(batch, -1)``."""
    return x.reshape(batch, -1)


def _select(mask: torch.Tensor, new: torch.Tensor, old: torch.Tensor, batch: int) -> torch.Tensor:
    """Per-video choice between two tensors of a block's layout (videos contiguous in the leading dim)."""
    if mask.numel() == 1:
        return new if bool(mask) else old
    rows = mask.to(new.device).view(batch, 1)
    return torch.where(rows, _rows(new, batch), _rows(old, batch)).view_as(new)


def _frames(p: torch.Tensor, batch: int, num_frames: int, layout: str | None = None) -> torch.Tensor | None:
    """View a residual as ``(B, T, X)`` frames, in the given layout or, without one, the layout its shape
    suggests; None if it fits none."""
    T = num_frames
    if T < 2 or p.dim() != 3:
        return None
    if layout is None:
        if p.shape[0] == batch and p.shape[1] % T == 0:
            layout = "tokens"
        elif p.shape[0] == batch * T:
            layout = "spatial"
        elif p.shape[1] == T and p.shape[0] % batch == 0:
            layout = "temporal"
        else:
            return None
    if layout in ("tokens", "spatial"):  # (B, T*S, C) frame-major tokens, or (B*T, S, C)
        return p.reshape(batch, T, -1)
    return p.reshape(batch, -1, T, p.shape[2]).transpose(1, 2).reshape(batch, T, -1)  # (B*S, T, C)


class AdaCacheBlockHook(ModelHook):
    """Replaces one block's forward: compute and cache its residual, or add the cached one."""

    _is_stateful = True

    def __init__(self, name: str, metadata: TransformerBlockMetadata, run: _Run, config: AdaCacheConfig,
                 monitor: bool, layout: str | None = None):
        super().__init__()
        self.name, self.metadata, self.run, self.config = name, metadata, run, config
        self.monitor, self.layout = monitor, layout
        self.record_motion = False  # calibration records the motion score even without MoReg
        self.state_manager = StateManager(_BlockState)

    def reset_state(self, module):
        self.state_manager.reset()
        return module

    def new_forward(self, module: nn.Module, *args, **kwargs):
        run, meta = self.run, self.metadata
        state: _BlockState = self.state_manager.get_state()
        if state.generation != run.schedule.generation:
            state.reset()
            state.generation = run.schedule.generation
        hidden = meta._get_parameter_from_args_kwargs(meta.hidden_states_argument_name, args, kwargs)
        encoder = None
        if meta.return_encoder_hidden_states_index is not None:
            encoder = meta._get_parameter_from_args_kwargs(meta.encoder_hidden_states_argument_name, args, kwargs)
        active = run.active
        if state.residual is not None and not bool(active.any()):
            return self._reuse(state, hidden, encoder)

        output = self.fn_ref.original_forward(*args, **kwargs)
        hidden_out, encoder_out = self._split(output)
        residual = hidden_out - hidden
        encoder_residual = None if encoder is None or encoder_out is None else encoder_out - encoder
        if self.monitor:
            self._observe(state, run.captured.pop(self.name, residual), active)
        if state.residual is None or bool(active.all()):
            if not run.last_step:
                state.residual, state.encoder_residual = residual, encoder_residual
                state.output_template = output if isinstance(output, tuple) else None
            else:  # the last step: nothing will read the caches again
                state.residual = state.encoder_residual = state.output_template = None
            return output
        # some videos compute, others reuse: each keeps to its own schedule
        old_residual, old_encoder_residual = state.residual, state.encoder_residual
        state.residual = _select(active, residual, old_residual, run.batch)
        hidden_out = _select(active, hidden_out, hidden + old_residual, run.batch)
        if encoder_residual is not None and old_encoder_residual is not None:
            state.encoder_residual = _select(active, encoder_residual, old_encoder_residual, run.batch)
            encoder_out = _select(active, encoder_out, encoder + old_encoder_residual, run.batch)
        return self._join(output, hidden_out, encoder_out)

    def _reuse(self, state: _BlockState, hidden: torch.Tensor, encoder: torch.Tensor | None):
        hidden_out = hidden + state.residual
        if state.output_template is None:
            return hidden_out
        encoder_out = encoder if state.encoder_residual is None else encoder + state.encoder_residual
        return self._join(state.output_template, hidden_out, encoder_out)

    def _split(self, output) -> tuple[torch.Tensor, torch.Tensor | None]:
        if isinstance(output, torch.Tensor):
            return output, None
        meta = self.metadata
        encoder = None
        if meta.return_encoder_hidden_states_index is not None:
            encoder = output[meta.return_encoder_hidden_states_index]
        return output[meta.return_hidden_states_index], encoder

    def _join(self, template, hidden_out: torch.Tensor, encoder_out: torch.Tensor | None):
        if not isinstance(template, tuple):
            return hidden_out
        output = list(template)
        output[self.metadata.return_hidden_states_index] = hidden_out
        if self.metadata.return_encoder_hidden_states_index is not None:
            output[self.metadata.return_encoder_hidden_states_index] = encoder_out
        return tuple(output)

    def _observe(self, state: _BlockState, p: torch.Tensor, active: torch.Tensor) -> None:
        """The change metric c_t (and the motion score for MoReg) of the monitored residual ``p``.

        Both are ratios of sums over the tokens; under context parallelism each rank holds a share of the tokens,
        so the sums are added over the ranks (one small all-reduce) before dividing, and every rank reads the
        single-process metric and takes the same decision."""
        run, config = self.run, self.config
        rows = active.numel()
        p = p.detach().float()
        step = torch.full((rows,), run.step)
        if state.monitor_previous is not None and state.monitor_previous.shape == p.shape:
            previous = state.monitor_previous
            k = (step - state.monitor_step).clamp(min=1).float()
            sums = [_pool(_distance(previous - p, config.norm), rows), _pool(_distance(previous, config.norm), rows)]
            if config.moreg or self.record_motion:
                sums += self._motion_sums(p, rows)
            sums = all_reduce_sum(torch.stack(sums), run.group)  # (2 + 2 * strides, rows)
            change, size = sums[0], sums[1]
            if config.norm == "l2":
                change, size = change.sqrt(), size.sqrt()
            metric = change / size.clamp(min=1e-12) / k
            motion = None
            if len(sums) > 2:
                energy, scale = sums[2::2], sums[3::2]
                motion = (energy / scale.clamp(min=1e-12)).mean(0)
            self.run.schedule.observe(active & (state.monitor_step >= 0), metric, motion)
            state.monitor_previous = _select(active, p, previous, run.batch)
            state.monitor_step = torch.where(active, step, state.monitor_step)
        else:
            state.monitor_previous, state.monitor_step = p, torch.where(active, step, -1)

    def _motion_sums(self, p: torch.Tensor, rows: int) -> list[torch.Tensor]:
        """MoReg's frame-difference energy and its scale, ``[energy, scale]`` per usable stride, each ``(rows,)``."""
        run = self.run
        if not run.frames_local:  # the ranks split the token sequence across frames: reassemble it to compare frames
            p = all_gather_cat(p, run.group, dim=1)
        frames = _frames(p, run.batch, run.num_frames, self.layout)  # (B, T, X)
        sums = []
        for stride in self.config.moreg_strides if frames is not None else ():
            if stride >= frames.shape[1]:
                continue
            later, earlier = frames[:, stride:], frames[:, :-stride]
            sums.append(_pool((later - earlier).abs().flatten(1).sum(1), rows))
            sums.append(_pool(later.abs().flatten(1).sum(1) + earlier.abs().flatten(1).sum(1), rows))
        if not run.frames_local and run.group is not None and torch.distributed.get_rank(run.group) != 0:
            sums = [torch.zeros_like(piece) for piece in sums]  # every rank holds the whole sums: count them once
        return sums


def _distance(x: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-video norm pieces that :func:`_pool` can sum: L1 sums, or squared-L2 sums."""
    x = x.reshape(x.shape[0], -1)
    return x.abs().sum(1) if norm == "l1" else x.square().sum(1)


def _pool(per_leading: torch.Tensor, rows: int) -> torch.Tensor:
    """Sum leading-dim pieces into ``rows`` schedule rows (one, or one per video)."""
    return per_leading.reshape(rows, -1).sum(1) if rows > 1 else per_leading.sum().reshape(1)


class AdaCacheMonitorHook(ModelHook):
    """Captures the output of one residual branch (e.g. temporal attention) of a monitored block."""

    def __init__(self, block_name: str, run: _Run):
        super().__init__()
        self.block_name, self.run = block_name, run

    def post_forward(self, module, output):
        self.run.captured[self.block_name] = output[0] if isinstance(output, tuple) else output
        return output


# ------------------------------------------------------------------------------------------------ apply


def apply_ada_cache(model: nn.Module, config: AdaCacheConfig | None = None) -> None:
    """Hook AdaCache into ``model`` (a reelkit ``VideoDiT`` or a diffusers video transformer), in place.

    Raises :class:`AdaCacheError` if the model has no registered blocks, if a monitored block or residual
    does not exist, or if another cache (diffusers' or cache-dit's, or AdaCache itself) is applied.
    """
    config = config or AdaCacheConfig()
    step_hooks.refuse_to_stack(model, "_ada_cache_config", _OWN_HOOKS, "AdaCache", "remove_ada_cache", AdaCacheError)
    blocks = cached_blocks(model)
    if not blocks:
        raise AdaCacheError(f"{type(model).__name__} has no transformer blocks AdaCache knows; register its block "
                            "class with register_ada_cache_block")
    spec = model_spec(model)
    monitors = config.monitor_blocks or spec.monitor_blocks(model, list(blocks))
    residual = config.monitor_residual or spec.monitor_residual
    unknown = [name for name in monitors if name not in blocks]
    if unknown:
        raise AdaCacheError(f"monitor block {unknown[0]!r} is not a cached block of {type(model).__name__}; "
                            f"choose among {', '.join(list(blocks)[:4])}, ...")
    if residual != "block":
        for name in monitors:
            if not isinstance(getattr(blocks[name], residual, None), nn.Module):
                raise AdaCacheError(f"block {name!r} has no submodule {residual!r} to monitor")

    signature = step_hooks.forward_signature(model)
    if spec.hidden_states_argument not in signature.parameters:
        raise AdaCacheError(f"{type(model).__name__}.forward has no {spec.hidden_states_argument!r} argument")
    run = _Run()
    register_hook(model, AdaCacheModelHook(config, run, spec.hidden_states_argument, spec, signature), _MODEL_HOOK)
    for name, block in blocks.items():
        hook = AdaCacheBlockHook(name, step_hooks.block_metadata(type(block)), run, config, name in monitors,
                                 spec.layout(name, residual))
        register_hook(block, hook, _BLOCK_HOOK)
        if name in monitors and residual != "block":
            register_hook(getattr(block, residual), AdaCacheMonitorHook(name, run), _MONITOR_HOOK)
    step_hooks.claim(model, "_ada_cache_config", config)


def remove_ada_cache(model: nn.Module) -> None:
    """Remove AdaCache's hooks and caches; the model computes exactly as before :func:`apply_ada_cache`."""
    step_hooks.uninstall(model, "_ada_cache_config", _OWN_HOOKS)


def _model_hook(model: nn.Module) -> AdaCacheModelHook:
    return step_hooks.applied_hook(model, _MODEL_HOOK, "AdaCache", AdaCacheError)


def ada_cache_stats(model: nn.Module) -> dict[str, AdaCacheStats]:
    """Computed and reused steps of the last (or current) generation, per cache context."""
    stats = {}
    for context, steps in _model_hook(model).stats.items():
        decisions = [steps[s] for s in sorted(steps)]  # each: one bool per schedule row
        rows = len(decisions[0]) if decisions else 0
        computed_steps = tuple(tuple(s for s, d in zip(sorted(steps), decisions, strict=True) if d[row])
                               for row in range(rows))
        stats[context] = AdaCacheStats(computed=tuple(len(c) for c in computed_steps),
                                       reused=tuple(len(decisions) - len(c) for c in computed_steps),
                                       computed_steps=computed_steps)
    return stats


def reset_ada_cache(model: nn.Module) -> None:
    """Forget all schedules and cached residuals (new generations also start afresh on their own)."""
    step_hooks.reset(model, _MODEL_HOOK, "AdaCache", AdaCacheError)


def record_metric_trace(model: nn.Module, enabled: bool = True) -> list[dict] | None:
    """Start (or stop) recording, at every schedule decision, ``{"step", "metric", "observed", "motion"}``
    (lists with one entry per schedule row; ``metric`` before MoReg). Returns the list being filled."""
    hook = _model_hook(model)
    hook.trace = [] if enabled else None
    for module in model.modules():
        block_hook = get_hook(module, _BLOCK_HOOK)
        if block_hook is not None:
            block_hook.record_motion = enabled
    return hook.trace


def format_stats(stats: dict[str, AdaCacheStats]) -> str:
    """One line, e.g. ``cond 14 computed / 36 reused, uncond 14 / 36``."""
    parts = []
    for context, s in stats.items():
        pairs = ", ".join(f"{c}/{r}" for c, r in zip(s.computed, s.reused, strict=True))
        parts.append(f"{context} {pairs}")
    return "computed/reused steps: " + "; ".join(parts)


__all__ = ["AdaCacheModelHook", "AdaCacheStats", "ada_cache_stats", "apply_ada_cache", "format_stats",
           "record_metric_trace", "remove_ada_cache", "reset_ada_cache"]
