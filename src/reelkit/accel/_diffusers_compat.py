"""The one place reelkit's accelerators touch diffusers' hook internals.

diffusers' hook API (``ModelHook``, ``HookRegistry``, ``StateManager``, ``CacheContext``) is public
but young: attribute names moved between releases. Every accelerator imports it from here, so a
diffusers upgrade is mended in this file alone.
"""

from __future__ import annotations

import torch
from diffusers.hooks._helpers import TransformerBlockMetadata, TransformerBlockRegistry
from diffusers.hooks.hooks import BaseState, CacheContext, HookRegistry, ModelHook, StateManager, _set_cache_context

# hooks that diffusers' own caches register; reelkit refuses to stack on top of them
DIFFUSERS_CACHE_HOOKS = (
    "faster_cache_denoiser", "faster_cache_block", "fbc_leader_block_hook", "fbc_block_hook",
    "mag_cache_leader_block_hook", "mag_cache_block_hook", "pyramid_attention_broadcast",
    "taylorseer_cache", "sea_cache_root", "sea_cache_block", "sea_cache_leader_block",
)


def registry_of(module: torch.nn.Module) -> HookRegistry:
    return HookRegistry.check_if_exists_or_initialize(module)


def hook_names(module: torch.nn.Module) -> set[str]:
    """Names of every diffusers hook registered on ``module`` or any of its submodules."""
    names = set()
    for submodule in module.modules():
        registry = getattr(submodule, "_diffusers_hook", None)
        if registry is not None:
            names.update(registry.hooks)
    return names


def own_hook_names(module: torch.nn.Module) -> set[str]:
    """Names of the diffusers hooks registered on ``module`` itself (not its submodules)."""
    registry = getattr(module, "_diffusers_hook", None)
    return set(registry.hooks) if registry is not None else set()


def active_cache(module: torch.nn.Module, own_hooks: tuple[str, ...] = ()) -> str | None:
    """A short description of a cache already applied to ``module`` (diffusers' or cache-dit's), or None."""
    config = getattr(module, "_cache_config", None)
    if config is not None:
        return type(config).__name__
    foreign = sorted(name for name in hook_names(module) - set(own_hooks) if name in DIFFUSERS_CACHE_HOOKS)
    if foreign:
        return f"diffusers hooks {', '.join(foreign)}"
    if getattr(module, "_is_cached", False):
        return "cache-dit"
    return None


def claim_cache(model: torch.nn.Module, attribute: str, config) -> None:
    """Record an accelerator's ``config`` on ``model`` as ``attribute``; on a diffusers ``CacheMixin`` model
    also as ``_cache_config``, so diffusers refuses to stack its own caches on top."""
    setattr(model, attribute, config)
    if hasattr(model, "enable_cache"):
        model._cache_config = config


def release_cache(model: torch.nn.Module, attribute: str) -> None:
    """Undo :func:`claim_cache`."""
    config = model.__dict__.pop(attribute, None)
    if config is not None and model.__dict__.get("_cache_config") is config:
        del model._cache_config


def get_hook(model: torch.nn.Module, name: str):
    """The hook registered on ``model`` under ``name``, or None."""
    registry = getattr(model, "_diffusers_hook", None)
    return registry.get_hook(name) if registry is not None else None


def remove_hooks(module: torch.nn.Module, *names: str) -> None:
    registry = registry_of(module)
    for name in names:
        registry.remove_hook(name, recurse=True)
    registry.invalidate_child_registries_cache()


_CONTEXT_PARALLEL_HOOKS = ("cp_input---", "cp_output---")  # diffusers' context-parallel split and gather hooks


def register_hook(module: torch.nn.Module, hook: ModelHook, name: str) -> None:
    """Register ``hook`` on ``module``, inside any context-parallel split or gather diffusers put there: a cache
    must see the rank's share of the tokens, the tensors the module itself computes on. (The split hooks are
    taken off while they are the outermost and put back on top: taking off an inner hook would leave a
    ``new_forward`` hook above it calling the removed one.)"""
    registry = registry_of(module)
    outer = [(n, registry.hooks[n]) for n in registry._hook_order if n.startswith(_CONTEXT_PARALLEL_HOOKS)]
    for n, _ in reversed(outer):
        registry.remove_hook(n, recurse=False)
    registry.register_hook(hook, name)
    for n, moved in outer:
        registry.register_hook(moved, n)


def invalidate(module: torch.nn.Module) -> None:
    registry_of(module).invalidate_child_registries_cache()


def current_context(state_manager: StateManager) -> CacheContext | None:
    """The cache context a pipeline entered (``model.cache_context(...)``), or None outside one."""
    return state_manager._context


def set_cache_context(module: torch.nn.Module, context: CacheContext | None) -> None:
    _set_cache_context(module, context)


def reset_hooks(model: torch.nn.Module) -> None:
    """Reset every stateful hook on ``model`` and its submodules (diffusers' ``reset_stateful_hooks``)."""
    model._diffusers_hook.reset_stateful_hooks(recurse=True)


def registered_block_metadata(block_class: type) -> TransformerBlockMetadata | None:
    """``block_class``'s entry in diffusers' ``TransformerBlockRegistry`` (exact class), or None."""
    try:
        return TransformerBlockRegistry.get(block_class)
    except ValueError:
        return None


__all__ = ["BaseState", "CacheContext", "ModelHook", "StateManager", "TransformerBlockMetadata", "active_cache",
           "claim_cache", "current_context", "get_hook", "hook_names", "invalidate", "own_hook_names", "register_hook",
           "registered_block_metadata", "registry_of", "release_cache", "remove_hooks", "reset_hooks",
           "set_cache_context"]
