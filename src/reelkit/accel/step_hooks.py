"""The step-aware hook base of reelkit's training-free accelerators (AdaCache, Step Rehash).

Both decide, at every denoising step, whether the model computes or reuses. Both therefore need the same
things from the model's forward, and this module gives them once:

* the **cache context** the pipeline entered (``model.cache_context("cond", step_index=..., ...)``), or a
  fallback context when a pipeline calls the model outside any (so one model serves plain loops too);
* a **step clock** per context (:class:`ContextClock`): the pipeline's step index or, without one, a count
  of calls that restarts when a new generation begins, so an interrupted generation never poisons the next;
* per-context **stats** of the last generation, kept across ``reset_state`` (pipelines reset at the end);
* **refusal to stack** on another cache, and the lookup of an applied hook with a one-line error.

Techniques subclass :class:`StepAwareModelHook` and implement ``begin`` (decide for this step) and
``end`` (forget per-forward state); all diffusers hook internals stay in :mod:`._diffusers_compat`.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from reelkit.accel._diffusers_compat import (
    BaseState,
    CacheContext,
    ModelHook,
    StateManager,
    TransformerBlockMetadata,
    active_cache,
    claim_cache,
    current_context,
    get_hook,
    invalidate,
    registered_block_metadata,
    release_cache,
    remove_hooks,
    reset_hooks,
    set_cache_context,
)
from reelkit.errors import ReelkitError

_BLOCK_METADATA: dict[type, TransformerBlockMetadata] = {}


def register_block(block_class: type, return_hidden_states_index: int | None = 0,
                   return_encoder_hidden_states_index: int | None = None,
                   hidden_states_argument_name: str = "hidden_states",
                   encoder_hidden_states_argument_name: str = "encoder_hidden_states") -> None:
    """Make the accelerators treat every ``block_class`` as a transformer block (blocks in diffusers'
    ``TransformerBlockRegistry`` need no registration): name the block's forward parameter for the token
    stream (and the text stream, if the block returns an updated one) and where they sit in its output."""
    _BLOCK_METADATA[block_class] = TransformerBlockMetadata(
        return_hidden_states_index=return_hidden_states_index,
        return_encoder_hidden_states_index=return_encoder_hidden_states_index,
        hidden_states_argument_name=hidden_states_argument_name,
        encoder_hidden_states_argument_name=encoder_hidden_states_argument_name,
        _cls=block_class)


def block_metadata(block_class: type) -> TransformerBlockMetadata | None:
    """How a block class's forward reads and returns its streams, or None for a class that is no block."""
    return _BLOCK_METADATA.get(block_class) or registered_block_metadata(block_class)


class ContextClock:
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


def forward_signature(model: nn.Module) -> inspect.Signature:
    """The signature of ``type(model).forward`` without ``self``: how hooks find arguments by name."""
    signature = inspect.signature(type(model).forward)
    return signature.replace(parameters=list(signature.parameters.values())[1:])


class StepAwareModelHook(ModelHook):
    """Sits on the model's forward: finds the cache context, the step within it and the step count, and
    hands them to :meth:`begin`; :meth:`end` runs after the forward, whatever happens in it.

    Subclasses set ``technique`` (for messages), ``fallback_context`` and ``error``, keep their per-context
    state in :meth:`reset_contexts`, and fill ``self.stats[context][step]`` with their decisions.
    """

    _is_stateful = True
    technique = "this accelerator"
    fallback_context = "accelerator"  # used when the pipeline calls the model outside any cache_context
    error: type[ReelkitError] = ReelkitError

    def __init__(self, config, signature: inspect.Signature, hidden_argument: str):
        super().__init__()
        self.config, self.signature, self.hidden_argument = config, signature, hidden_argument
        self.state_manager = StateManager(BaseState)  # carries the pipeline's cache context
        self.trace: list | None = None  # set by calibration to record what each step decided from
        self.stats: dict[str, dict[int, object]] = {}  # the last generation's decisions, per context
        self.reset_state(None)

    def reset_state(self, module):
        self.clocks: dict[str, ContextClock] = {}
        self.reset_contexts()
        return module

    def reset_contexts(self) -> None:
        """Forget the per-context state of the technique (schedules, stored features)."""

    def begin(self, module: nn.Module, context: CacheContext, step: int, num_steps: int, arguments: dict) -> None:
        """Decide for this step (compute or reuse) before the model's forward runs."""
        raise NotImplementedError

    def finish(self, context: CacheContext, step: int, num_steps: int) -> None:
        """After a forward that completed: record what calibration asked for (``self.trace``)."""

    def end(self) -> None:
        """After every forward, completed or not: forget what belonged to this forward only."""

    def new_forward(self, module: nn.Module, *args, **kwargs):
        context = current_context(self.state_manager)
        fallback = context is None
        if fallback:
            context = CacheContext(self.fallback_context)
            set_cache_context(module, context)
        try:
            num_steps = context.num_inference_steps or self.config.num_inference_steps
            if not num_steps:
                raise self.error(f"{self.technique} needs the number of inference steps: this pipeline does not pass "
                                 f"it to cache_context, so set {type(self.config).__name__}(num_inference_steps=...)")
            arguments = self.signature.bind_partial(*args, **kwargs).arguments
            timestep = arguments.get("timestep")
            if isinstance(timestep, torch.Tensor):
                timestep = float(timestep.detach().float().max()) if timestep.numel() else None
            clock = self.clocks.setdefault(context.name, ContextClock())
            step = clock.tick(context, None if timestep is None else float(timestep), num_steps)
            self.begin(module, context, step, num_steps, arguments)
            output = self.fn_ref.original_forward(*args, **kwargs)
            self.finish(context, step, num_steps)
            return output
        finally:
            self.end()
            if fallback:
                set_cache_context(module, None)


def refuse_to_stack(model: nn.Module, attribute: str, own_hooks: tuple[str, ...], technique: str, remover: str,
                    error: type[ReelkitError]) -> None:
    """Raise ``error`` if ``technique`` (recorded as ``attribute``) or any other cache is already applied."""
    if hasattr(model, attribute):
        raise error(f"{technique} is already applied to this {type(model).__name__}; {remover} first")
    other = active_cache(model, own_hooks)
    if other is not None:
        raise error(f"{type(model).__name__} already has a cache ({other}); remove it before applying {technique}")


def claim(model: nn.Module, attribute: str, config) -> None:
    """Record an applied technique's ``config`` on ``model`` (so caches refuse to stack) once its hooks are in."""
    claim_cache(model, attribute, config)
    invalidate(model)


def uninstall(model: nn.Module, attribute: str, hook_names: tuple[str, ...]) -> None:
    """Remove a technique's hooks and its record: the model computes exactly as before it was applied."""
    remove_hooks(model, *hook_names)
    release_cache(model, attribute)


def reset(model: nn.Module, name: str, technique: str, error: type[ReelkitError]) -> None:
    """Forget every schedule and stored tensor of the technique applied to ``model``."""
    applied_hook(model, name, technique, error)
    reset_hooks(model)


def applied_hook(model: nn.Module, name: str, technique: str, error: type[ReelkitError]) -> StepAwareModelHook:
    """The model hook ``technique`` registered on ``model`` as ``name``; ``error`` if it is not applied."""
    hook = get_hook(model, name)
    if hook is None:
        raise error(f"{technique} is not applied to this {type(model).__name__}")
    return hook


__all__ = ["ContextClock", "StepAwareModelHook", "applied_hook", "block_metadata", "claim", "forward_signature",
           "refuse_to_stack", "register_block", "reset", "uninstall"]
