"""AdaCache + MoReg: content-adaptive caching of DiT block residuals (Kahatapitiya et al. 2024, arXiv 2411.02397).

Every transformer block computes ``x_out = x_in + residual``. On a *compute* step AdaCache runs each block
and stores its residual; on a *reuse* step every block returns ``x_in + cached residual`` and the block's
attention and MLP are skipped. All blocks share one schedule, so a reuse step costs only the embedders and
the output layer. The schedule adapts to each video: at every compute step the relative change of a
monitored residual ``p_t`` since the previous compute step, per step of distance,

    c_t = ||p_{t-k} - p_t|| / ||p_{t-k}|| / k

is looked up in a *codebook* (ascending thresholds -> reuse lengths): slowly changing videos get long
reuse lengths, fast-changing ones short ones. Motion Regularisation (MoReg) scales ``c_t`` by a motion
factor ``M_t = ((m / centre) ** exponent) / divisor`` computed from the frame-to-frame difference energy
``m`` of ``p_t``, plus the gain-scaled change of that factor, so high-motion videos recompute more often.

Beyond the official code this implementation takes a codebook of any length, normalises by the real
distance between compute steps, keeps one schedule per CFG branch or a shared one, can give each video
in a batch its own schedule, resets itself when a new generation starts (so an interrupted generation
does not poison the next), and works on any model whose blocks are registered (see
:func:`register_ada_cache_block`).

>>> import torch
>>> from reelkit.models.dit import VideoDiT
>>> from reelkit.accel.adacache import AdaCacheConfig, apply_ada_cache, ada_cache_stats, remove_ada_cache
>>> model = VideoDiT(num_layers=2, num_attention_heads=2, attention_head_dim=16, text_dim=24).eval()
>>> apply_ada_cache(model, AdaCacheConfig(codebook={0.5: 4, 1.0: 2}))
>>> latents, text = torch.randn(1, 8, 5, 8, 8), torch.randn(1, 12, 24)
>>> for step, t in enumerate(torch.linspace(1000, 20, 10)):
...     with model.cache_context("cond", step_index=step, num_inference_steps=10):
...         velocity = model(latents, t, text).sample
>>> stats = ada_cache_stats(model)["cond"]
>>> stats.computed[0] + stats.reused[0]
10
>>> remove_ada_cache(model)
"""

from __future__ import annotations

import inspect
import itertools
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from diffusers.hooks._helpers import TransformerBlockMetadata, TransformerBlockRegistry
from torch import nn

from reelkit.accel._diffusers_compat import (
    BaseState,
    CacheContext,
    ModelHook,
    StateManager,
    active_cache,
    claim_cache,
    current_context,
    get_hook,
    invalidate,
    register_hook,
    release_cache,
    remove_hooks,
    set_cache_context,
)
from reelkit.errors import ReelkitError

_MODEL_HOOK = "ada_cache_model"
_BLOCK_HOOK = "ada_cache_block"
_MONITOR_HOOK = "ada_cache_monitor"
_OWN_HOOKS = (_MODEL_HOOK, _BLOCK_HOOK, _MONITOR_HOOK)
FALLBACK_CONTEXT = "ada_cache"  # used when the pipeline calls the model outside any cache_context


class AdaCacheError(ReelkitError, ValueError):
    """A bad AdaCache configuration, codebook file, or a model AdaCache cannot hook."""


# ------------------------------------------------------------------------------------------------ codebook


@dataclass(frozen=True)
class Codebook:
    """Ascending metric thresholds and the reuse length (in steps) for a metric below each.

    The rate for a metric ``c`` is that of the first threshold with ``c < threshold``; above every
    threshold the last rate applies. Rates of 1 mean "compute every step".

    >>> book = Codebook.from_table({0.1: 6, 0.2: 3, 1.0: 1})
    >>> book.rates_for(torch.tensor([0.05, 0.15, 0.5, 3.0])).tolist()
    [6, 3, 1, 1]
    """

    thresholds: tuple[float, ...]
    rates: tuple[int, ...]

    def __post_init__(self):
        if not self.thresholds or len(self.thresholds) != len(self.rates):
            raise AdaCacheError("a codebook needs one reuse length per threshold and at least one entry")
        if any(b <= a for a, b in zip(self.thresholds, self.thresholds[1:], strict=False)):
            raise AdaCacheError(f"codebook thresholds must be strictly ascending, got {list(self.thresholds)}")
        if any(not isinstance(r, int) or r < 1 for r in self.rates):
            raise AdaCacheError(f"codebook reuse lengths must be whole numbers >= 1, got {list(self.rates)}")

    @classmethod
    def from_table(cls, table: Mapping[float, int] | Sequence[tuple[float, int]]) -> Codebook:
        try:
            items = sorted(((float(t), int(r)) for t, r in (table.items() if isinstance(table, Mapping) else table)))
        except (TypeError, ValueError) as error:
            raise AdaCacheError(f"a codebook maps thresholds to reuse lengths; could not read {table!r}") from error
        return cls(tuple(t for t, _ in items), tuple(r for _, r in items))

    @classmethod
    def load(cls, path: str | Path) -> Codebook:
        """Read a codebook written by :meth:`save` or ``reelkit calibrate adacache``."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
            return cls.from_table([(entry["threshold"], entry["rate"]) for entry in data["codebook"]])
        except FileNotFoundError as error:
            raise AdaCacheError(f"{path}: no such codebook file") from error
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as error:
            raise AdaCacheError(f"{path}: not a codebook file (expected JSON with a 'codebook' list of "
                                f"{{threshold, rate}})") from error

    def save(self, path: str | Path, **metadata: Any) -> None:
        entries = [{"threshold": t, "rate": r} for t, r in zip(self.thresholds, self.rates, strict=True)]
        from reelkit.files import write_json

        write_json(path, {"codebook": entries, **metadata})

    def scaled(self, factor: float) -> Codebook:
        """The same thresholds with reuse lengths multiplied by ``factor`` (e.g. to move a book to more steps)."""
        return Codebook(self.thresholds, tuple(max(1, round(r * factor)) for r in self.rates))

    def rates_for(self, metric: torch.Tensor) -> torch.Tensor:
        thresholds = torch.tensor(self.thresholds, dtype=metric.dtype, device=metric.device)
        index = torch.searchsorted(thresholds, metric.contiguous(), right=True).clamp(max=len(self.rates) - 1)
        return torch.tensor(self.rates, device=metric.device)[index]


# The official 30-step Open-Sora books (configs/sample_adacache.py); the thresholds are the same, only the
# reuse lengths differ. They are rescaled to the step count of each generation.
PRESETS: dict[str, tuple[dict[float, int], int]] = {
    "fast": ({0.08: 6, 0.16: 5, 0.24: 4, 0.32: 3, 0.40: 2, 1.00: 1}, 30),
    "slow": ({0.08: 3, 0.16: 2, 0.24: 1, 0.32: 1, 0.40: 1, 1.00: 1}, 30),
}


def preset_codebook(name: str, num_inference_steps: int) -> Codebook:
    """A named preset (``"fast"``, ``"slow"``) with its reuse lengths scaled to ``num_inference_steps``."""
    if name not in PRESETS:
        raise AdaCacheError(f"unknown AdaCache preset {name!r}; choose one of {', '.join(PRESETS)}")
    table, steps = PRESETS[name]
    return Codebook.from_table(table).scaled(num_inference_steps / steps)


# ------------------------------------------------------------------------------------------------ config


@dataclass
class AdaCacheConfig:
    """What AdaCache monitors, how it maps change to reuse, and how schedules are shared.

    Attributes:
        codebook: threshold -> reuse-length table (a dict, a list of pairs, a :class:`Codebook`), or the
            name of a preset (``"fast"``, ``"slow"``) whose reuse lengths scale with the step count.
        monitor_blocks: qualified names of the block(s) whose residual drives the schedule (e.g.
            ``("transformer_blocks.4",)``); with several, their metrics are averaged. ``None``: the
            model's registered default, else the middle block.
        monitor_residual: ``"block"`` (the block's whole residual, the cached quantity) or the name of a
            submodule of the monitored block whose output is one residual branch (e.g. ``"attn_temporal"``,
            the paper's ``t-attn``). ``None``: the model's registered default.
        norm: ``"l1"`` (the paper's choice) or ``"l2"`` distance in the change metric.
        compute_first, compute_last: steps always computed at the start and at the end of the schedule.
        moreg: enable Motion Regularisation.
        moreg_centre, moreg_exponent, moreg_divisor: ``M_t = ((m / centre) ** exponent) / divisor``;
            ``M_t = 1`` at ``m = centre``. 0.385 is Open-Sora's typical motion; calibration re-centres it.
        moreg_gradient_gain: gain of the motion-gradient term ``|gain * (M_t - M_prev) / k|``.
        moreg_window: the part of the schedule (fractions of the steps) where MoReg is active.
        moreg_strides: frame strides of the motion score.
        cfg: ``"shared"`` (one schedule for the cond and uncond calls of a step, the official behaviour)
            or ``"per_branch"`` (each cache context keeps its own).
        per_sample: give each video of a batch its own schedule (the official code pools the batch). A
            block is skipped only when every video reuses it, and each video's output is the one it
            would get alone.
        num_inference_steps: step count for pipelines that do not pass it to ``cache_context``.
    """

    codebook: str | Codebook | Mapping[float, int] | Sequence[tuple[float, int]] = "fast"
    monitor_blocks: tuple[str, ...] | None = None
    monitor_residual: str | None = None
    norm: Literal["l1", "l2"] = "l1"
    compute_first: int = 2
    compute_last: int = 2
    moreg: bool = False
    moreg_centre: float = 0.385
    moreg_exponent: float = 8.0
    moreg_divisor: float = 1.0
    moreg_gradient_gain: float = 10.0
    moreg_window: tuple[float, float] = (0.1, 0.9)
    moreg_strides: tuple[int, ...] = (1,)
    cfg: Literal["shared", "per_branch"] = "shared"
    per_sample: bool = False
    num_inference_steps: int | None = None

    def __post_init__(self):
        if isinstance(self.codebook, str):
            preset_codebook(self.codebook, 30)  # validates the name
        elif not isinstance(self.codebook, Codebook):
            self.codebook = Codebook.from_table(self.codebook)
        if self.norm not in ("l1", "l2"):
            raise AdaCacheError(f"norm must be 'l1' or 'l2', got {self.norm!r}")
        if self.cfg not in ("shared", "per_branch"):
            raise AdaCacheError(f"cfg must be 'shared' or 'per_branch', got {self.cfg!r}")
        if self.compute_first < 1 or self.compute_last < 0:
            raise AdaCacheError("compute_first must be >= 1 and compute_last >= 0")
        low, high = self.moreg_window
        if not 0 <= low <= high <= 1:
            raise AdaCacheError(f"moreg_window is a pair of fractions 0 <= start <= end <= 1, got {self.moreg_window}")
        if self.moreg_centre <= 0 or self.moreg_divisor <= 0 or not self.moreg_strides:
            raise AdaCacheError("moreg_centre and moreg_divisor must be > 0 and moreg_strides non-empty")

    def codebook_for(self, num_inference_steps: int) -> Codebook:
        if isinstance(self.codebook, str):
            return preset_codebook(self.codebook, num_inference_steps)
        return self.codebook


# ------------------------------------------------------------------------------------------------ registry


def _frames_from_5d(model: nn.Module, hidden_states: torch.Tensor, arguments: dict[str, Any]) -> int:
    return hidden_states.shape[2]  # (B, C, T, H, W)


def _middle_block(model: nn.Module, blocks: list[str], prefix: str | None = None) -> tuple[str, ...]:
    candidates = [name for name in blocks if prefix is None or name.startswith(prefix + ".")] or blocks
    return (candidates[len(candidates) // 2],)


@dataclass
class AdaCacheModelSpec:
    """How AdaCache reads one model class: where its frame count is and what to monitor by default.

    Attributes:
        num_frames: ``(model, hidden_states, arguments) -> frames of the token grid`` from the model's
            forward inputs (``arguments`` maps parameter names to the values of the call).
        monitor_blocks: ``(model, cached block names) -> default monitored block names``.
        monitor_residual: default residual (``"block"`` or a submodule name in the monitored block).
        hidden_states_argument: name of the forward parameter holding the latents.
        layouts: token layout of residuals, by block-name prefix or residual-branch name: ``"tokens"``
            ``(B, T*S, C)``, ``"spatial"`` ``(B*T, S, C)`` or ``"temporal"`` ``(B*S, T, C)``. Unlisted
            residuals are recognised by shape, which is ambiguous when ``S == T``.
    """

    num_frames: Callable[[nn.Module, torch.Tensor, dict[str, Any]], int] = _frames_from_5d
    monitor_blocks: Callable[[nn.Module, list[str]], tuple[str, ...]] = _middle_block
    monitor_residual: str = "block"
    hidden_states_argument: str = "hidden_states"
    layouts: dict[str, str] = field(default_factory=dict)

    def layout(self, block_name: str, residual: str) -> str | None:
        if residual in self.layouts:
            return self.layouts[residual]
        for prefix, layout in self.layouts.items():
            if block_name.startswith(prefix + "."):
                return layout
        return None


_MODEL_SPECS: dict[type, AdaCacheModelSpec] = {}
_BLOCK_METADATA: dict[type, TransformerBlockMetadata] = {}


def register_ada_cache_model(model_class: type, spec: AdaCacheModelSpec) -> None:
    """Tell AdaCache how to read ``model_class`` (frame count, default monitor).

    Models not registered get the defaults: 5-D ``(B, C, T, H, W)`` latents and the middle block.
    """
    _MODEL_SPECS[model_class] = spec


def register_ada_cache_block(block_class: type, return_hidden_states_index: int | None = 0,
                             return_encoder_hidden_states_index: int | None = None,
                             hidden_states_argument_name: str = "hidden_states",
                             encoder_hidden_states_argument_name: str = "encoder_hidden_states") -> None:
    """Make AdaCache cache every ``block_class`` it finds in a model.

    Blocks already in diffusers' ``TransformerBlockRegistry`` need no registration. For a new model,
    name the block's forward parameter for the token stream (and the text stream, if the block returns
    an updated one) and where they sit in the block's output tuple:

    >>> from torch import nn
    >>> class MyBlock(nn.Module):
    ...     def forward(self, hidden_states, temb):
    ...         return hidden_states + temb
    >>> register_ada_cache_block(MyBlock)     # returns a tensor: the new hidden_states
    """
    _BLOCK_METADATA[block_class] = TransformerBlockMetadata(
        return_hidden_states_index=return_hidden_states_index,
        return_encoder_hidden_states_index=return_encoder_hidden_states_index,
        hidden_states_argument_name=hidden_states_argument_name,
        encoder_hidden_states_argument_name=encoder_hidden_states_argument_name,
        _cls=block_class)


def _block_metadata(block_class: type) -> TransformerBlockMetadata | None:
    if block_class in _BLOCK_METADATA:
        return _BLOCK_METADATA[block_class]
    try:
        return TransformerBlockRegistry.get(block_class)
    except ValueError:
        return None


def _model_spec(model: nn.Module) -> AdaCacheModelSpec:
    for cls in type(model).__mro__:
        if cls in _MODEL_SPECS:
            return _MODEL_SPECS[cls]
    return AdaCacheModelSpec()


def _register_known_models() -> None:
    import diffusers

    def frames_second(model, hidden_states, arguments):  # CogVideoX: (B, T, C, H, W), 1.5 patches time too
        patch_t = getattr(model.config, "patch_size_t", None) or 1
        return -(-hidden_states.shape[1] // patch_t)

    def frames_argument(model, hidden_states, arguments):  # LTX: packed tokens; a frame count or coordinates
        if arguments.get("num_frames") is not None:
            return int(arguments["num_frames"])
        coords = arguments.get("video_coords")  # (B, 3, N): frame, row, column of each token
        return int(coords[0, 0].unique().numel()) if coords is not None else 1

    def middle_temporal(model, blocks):
        return _middle_block(model, blocks, prefix="temporal_transformer_blocks")

    def middle_double_stream(model, blocks):
        return _middle_block(model, blocks, prefix="transformer_blocks")

    specs = {
        "LatteTransformer3DModel": AdaCacheModelSpec(
            monitor_blocks=middle_temporal,
            layouts={"temporal_transformer_blocks": "temporal", "transformer_blocks": "spatial"}),
        "CogVideoXTransformer3DModel": AdaCacheModelSpec(num_frames=frames_second),
        "LTXVideoTransformer3DModel": AdaCacheModelSpec(num_frames=frames_argument),
        "HunyuanVideoTransformer3DModel": AdaCacheModelSpec(monitor_blocks=middle_double_stream),
    }
    for name, spec in specs.items():
        if hasattr(diffusers, name):
            register_ada_cache_model(getattr(diffusers, name), spec)
    from reelkit.models.dit import VideoDiT  # the paper's default monitor: a middle block's temporal attention

    register_ada_cache_model(VideoDiT, AdaCacheModelSpec(monitor_residual="attn_temporal",
                                                         layouts={"attn_temporal": "temporal"}))


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

    @property
    def active(self) -> torch.Tensor:
        return self.schedule.active

    @property
    def last_step(self) -> bool:
        return self.step >= self.schedule.num_steps - 1


class _ContextClock:
    """Step position of one cache context: the pipeline's step index or, without one, a count of calls
    since the generation began. A generation begins when the count reaches the step count or when the
    timestep turns against the direction it has been moving (down for most samplers, up for Mochi's)."""

    def __init__(self):
        self.calls = 0
        self.last_timestep: float | None = None
        self.direction = 0.0

    def tick(self, context: CacheContext, timestep: float | None, num_steps: int) -> int:
        restarted = False
        if timestep is not None and self.last_timestep is not None:
            delta = timestep - self.last_timestep
            if abs(delta) > 1e-6:
                restarted = self.direction != 0 and delta * self.direction < 0
                self.direction = 0.0 if restarted else (1.0 if delta > 0 else -1.0)
        self.last_timestep = timestep
        if context.step_index is not None:
            return int(context.step_index)
        if restarted or self.calls >= num_steps:
            self.calls = 0
        self.calls += 1
        return self.calls - 1


class AdaCacheModelHook(ModelHook):
    """Sits on the model's forward: finds the step, starts new generations, decides compute or reuse."""

    _is_stateful = True

    def __init__(self, config: AdaCacheConfig, run: _Run, hidden_states_argument: str, spec: AdaCacheModelSpec,
                 signature: inspect.Signature):
        super().__init__()
        self.config, self.run, self.spec, self.signature = config, run, spec, signature
        self.hidden_states_argument = hidden_states_argument
        self.state_manager = StateManager(BaseState)  # carries the pipeline's cache context
        self.trace: list | None = None  # set by calibration to record the metric per compute step
        # decisions of the last generation per context; kept across reset_state (pipelines reset at the end)
        self.stats: dict[str, dict[int, list[bool]]] = {}
        self.reset_state(None)

    def reset_state(self, module):
        self.schedules: dict[str, _Schedule] = {}
        self.clocks: dict[str, _ContextClock] = {}
        return module

    def new_forward(self, module: nn.Module, *args, **kwargs):
        context = current_context(self.state_manager)
        fallback = context is None
        if fallback:
            context = CacheContext(FALLBACK_CONTEXT)
            set_cache_context(module, context)
        try:
            self._begin(module, context, args, kwargs)
            return self.fn_ref.original_forward(*args, **kwargs)
        finally:
            self.run.captured.clear()
            if fallback:
                set_cache_context(module, None)

    def _begin(self, module: nn.Module, context: CacheContext, args, kwargs) -> None:
        config = self.config
        num_steps = context.num_inference_steps or config.num_inference_steps
        if not num_steps:
            raise AdaCacheError("AdaCache needs the number of inference steps: this pipeline does not pass it to "
                                "cache_context, so set AdaCacheConfig(num_inference_steps=...)")
        arguments = self.signature.bind_partial(*args, **kwargs).arguments
        hidden_states = arguments[self.hidden_states_argument]
        timestep = arguments.get("timestep")
        if isinstance(timestep, torch.Tensor):
            timestep = float(timestep.detach().float().max()) if timestep.numel() else None
        batch = hidden_states.shape[0]
        rows = batch if config.per_sample else 1

        clock = self.clocks.setdefault(context.name, _ContextClock())
        step = clock.tick(context, None if timestep is None else float(timestep), num_steps)
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
        """The change metric c_t (and the motion score for MoReg) of the monitored residual ``p``."""
        run, config = self.run, self.config
        rows = active.numel()
        p = p.detach().float()
        step = torch.full((rows,), run.step)
        if state.monitor_previous is not None and state.monitor_previous.shape == p.shape:
            previous = state.monitor_previous
            k = (step - state.monitor_step).clamp(min=1).float()
            change, size = _distance(previous - p, config.norm), _distance(previous, config.norm)
            change, size = _pool(change, rows), _pool(size, rows)
            if config.norm == "l2":
                change, size = change.sqrt(), size.sqrt()
            metric = change / size.clamp(min=1e-12) / k
            motion = self._motion(p, rows) if config.moreg or self.record_motion else None
            self.run.schedule.observe(active & (state.monitor_step >= 0), metric, motion)
            state.monitor_previous = _select(active, p, previous, run.batch)
            state.monitor_step = torch.where(active, step, state.monitor_step)
        else:
            state.monitor_previous, state.monitor_step = p, torch.where(active, step, -1)

    def _motion(self, p: torch.Tensor, rows: int) -> torch.Tensor | None:
        frames = _frames(p, self.run.batch, self.run.num_frames, self.layout)  # (B, T, X)
        if frames is None:
            return None
        scores = []
        for stride in self.config.moreg_strides:
            if stride >= frames.shape[1]:
                continue
            later, earlier = frames[:, stride:], frames[:, :-stride]
            energy = _pool((later - earlier).abs().flatten(1).sum(1), rows)
            scale = _pool(later.abs().flatten(1).sum(1) + earlier.abs().flatten(1).sum(1), rows)
            scores.append(energy / scale.clamp(min=1e-12))
        return torch.stack(scores).mean(0) if scores else None


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


def cached_blocks(model: nn.Module) -> dict[str, nn.Module]:
    """Every block of ``model`` that AdaCache caches, by qualified name, in registration order."""
    _register_known_models_once()
    return {name: module for name, module in model.named_modules()
            if name and _block_metadata(type(module)) is not None}


_KNOWN_REGISTERED = False


def _register_known_models_once() -> None:
    global _KNOWN_REGISTERED
    if not _KNOWN_REGISTERED:
        _KNOWN_REGISTERED = True
        _register_known_models()


def apply_ada_cache(model: nn.Module, config: AdaCacheConfig | None = None) -> None:
    """Hook AdaCache into ``model`` (a reelkit ``VideoDiT`` or a diffusers video transformer), in place.

    Raises :class:`AdaCacheError` if the model has no registered blocks, if a monitored block or residual
    does not exist, or if another cache (diffusers' or cache-dit's, or AdaCache itself) is applied.
    """
    config = config or AdaCacheConfig()
    if hasattr(model, "_ada_cache_config"):
        raise AdaCacheError(f"AdaCache is already applied to this {type(model).__name__}; remove_ada_cache first")
    other = active_cache(model, _OWN_HOOKS)
    if other is not None:
        raise AdaCacheError(f"{type(model).__name__} already has a cache ({other}); remove it before applying "
                            "AdaCache")
    blocks = cached_blocks(model)
    if not blocks:
        raise AdaCacheError(f"{type(model).__name__} has no transformer blocks AdaCache knows; register its block "
                            "class with register_ada_cache_block")
    spec = _model_spec(model)
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

    signature = inspect.signature(type(model).forward)
    signature = signature.replace(parameters=list(signature.parameters.values())[1:])  # drop self
    if spec.hidden_states_argument not in signature.parameters:
        raise AdaCacheError(f"{type(model).__name__}.forward has no {spec.hidden_states_argument!r} argument")
    run = _Run()
    register_hook(model, AdaCacheModelHook(config, run, spec.hidden_states_argument, spec, signature), _MODEL_HOOK)
    for name, block in blocks.items():
        hook = AdaCacheBlockHook(name, _block_metadata(type(block)), run, config, name in monitors,
                                 spec.layout(name, residual))
        register_hook(block, hook, _BLOCK_HOOK)
        if name in monitors and residual != "block":
            register_hook(getattr(block, residual), AdaCacheMonitorHook(name, run), _MONITOR_HOOK)
    claim_cache(model, "_ada_cache_config", config)
    invalidate(model)


def remove_ada_cache(model: nn.Module) -> None:
    """Remove AdaCache's hooks and caches; the model computes exactly as before :func:`apply_ada_cache`."""
    remove_hooks(model, _MODEL_HOOK, _BLOCK_HOOK, _MONITOR_HOOK)
    release_cache(model, "_ada_cache_config")


def _model_hook(model: nn.Module) -> AdaCacheModelHook:
    hook = get_hook(model, _MODEL_HOOK)
    if hook is None:
        raise AdaCacheError(f"AdaCache is not applied to this {type(model).__name__}")
    return hook


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
    _model_hook(model)
    model._diffusers_hook.reset_stateful_hooks(recurse=True)


def record_metric_trace(model: nn.Module, enabled: bool = True) -> list[dict] | None:
    """Start (or stop) recording, at every schedule decision, ``{"step", "metric", "observed", "motion"}``
    (lists with one entry per schedule row; ``metric`` before MoReg). Returns the list being filled."""
    hook = _model_hook(model)
    hook.trace = [] if enabled else None
    for module in model.modules():
        registry = getattr(module, "_diffusers_hook", None)
        block_hook = registry.get_hook(_BLOCK_HOOK) if registry is not None else None
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


__all__ = ["AdaCacheConfig", "AdaCacheError", "AdaCacheModelSpec", "AdaCacheStats", "Codebook", "PRESETS",
           "ada_cache_stats", "apply_ada_cache", "cached_blocks", "format_stats", "preset_codebook",
           "record_metric_trace", "register_ada_cache_block", "register_ada_cache_model", "remove_ada_cache",
           "reset_ada_cache"]
