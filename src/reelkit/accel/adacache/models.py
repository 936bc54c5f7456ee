"""How AdaCache reads each model class: frame count, default monitored block and residual layouts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from reelkit.accel.step_hooks import block_metadata, register_block


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
        frames_local_under_parallelism: whether the model's context-parallel plan leaves every rank whole frame
            sequences (VideoDiT splits each frame's locations); otherwise MoReg gathers the monitored residual to
            compare frames (diffusers' plans split the token sequence, e.g. Wan).
    """

    num_frames: Callable[[nn.Module, torch.Tensor, dict[str, Any]], int] = _frames_from_5d
    monitor_blocks: Callable[[nn.Module, list[str]], tuple[str, ...]] = _middle_block
    monitor_residual: str = "block"
    hidden_states_argument: str = "hidden_states"
    layouts: dict[str, str] = field(default_factory=dict)
    frames_local_under_parallelism: bool = False

    def layout(self, block_name: str, residual: str) -> str | None:
        if residual in self.layouts:
            return self.layouts[residual]
        for prefix, layout in self.layouts.items():
            if block_name.startswith(prefix + "."):
                return layout
        return None


_MODEL_SPECS: dict[type, AdaCacheModelSpec] = {}


def register_ada_cache_model(model_class: type, spec: AdaCacheModelSpec) -> None:
    """Tell AdaCache how to read ``model_class`` (frame count, default monitor).

    Models not registered get the defaults: 5-D ``(B, C, T, H, W)`` latents and the middle block.
    """
    _MODEL_SPECS[model_class] = spec


def model_spec(model: nn.Module) -> AdaCacheModelSpec:
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
                                                         layouts={"attn_temporal": "temporal"},
                                                         frames_local_under_parallelism=True))




register_ada_cache_block = register_block  # AdaCache's name for it (Step Rehash reads the same registry)


def cached_blocks(model: nn.Module) -> dict[str, nn.Module]:
    """Every block of ``model`` that AdaCache caches, by qualified name, in registration order."""
    _register_known_models_once()
    return {name: module for name, module in model.named_modules()
            if name and block_metadata(type(module)) is not None}


_KNOWN_REGISTERED = False


def _register_known_models_once() -> None:
    global _KNOWN_REGISTERED
    if not _KNOWN_REGISTERED:
        _KNOWN_REGISTERED = True
        _register_known_models()


__all__ = ["AdaCacheModelSpec", "cached_blocks", "model_spec", "register_ada_cache_block", "register_ada_cache_model"]
