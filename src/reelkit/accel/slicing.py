"""Feature Slicer + Operator Grouping: exact, lower-peak-memory inference (Zhan, Wu et al. 2024, arXiv 2411.01171).

A video denoiser's peak memory is set by the intermediates inside its blocks (attention projections,
MLP hiddens, conv workspaces), which grow with batch x frames x pixels. The **Feature Slicer** runs each
block on slices of its input: *spatial* operators (per-frame attention, 2-D convs, MLPs) on slices of
``B*F`` (``frame_chunks``), *temporal* operators (attention across frames, temporal convs, motion modules)
on slices of space (``spatial_chunks``). **Operator Grouping** runs a whole block, a run of consecutive
operators, to completion on one slice before the next slice starts and writes the slice straight into the
block's output, so no full-size intermediate exists between its operators: the peak falls from about
``|in| + |out| + intermediates`` to ``|in| + |out| + intermediates / chunks``.

Unlike the official code, normalisations whose statistics span a sliced axis (the GroupNorm of SVD's
temporal ResNets and of AnimateDiff's motion modules) use statistics of the full tensor, reduced in a first
pass, so the sliced model computes the same function as the plain one (up to float round-off from other
GEMM shapes); odd chunk counts and CFG batches are fine. With ``max_memory`` the chunk counts are picked per
input shape from two cheap measured probes. Slicing is for inference (``torch.no_grad()``, as pipelines
run); with autograd recording, blocks run unsliced. On CUDA, ``pipelined=True`` overlaps slices on a few streams
(at most ``max_in_flight`` slices in flight); on CPU it runs them in order.

>>> import torch
>>> from reelkit.models.dit import VideoDiT
>>> from reelkit.accel.slicing import SlicingConfig, apply_feature_slicing, remove_feature_slicing
>>> model = VideoDiT(num_layers=2, num_attention_heads=2, attention_head_dim=16, text_dim=24).eval()
>>> latents, text = torch.randn(2, 8, 5, 8, 8), torch.randn(2, 12, 24)
>>> with torch.no_grad():
...     plain = model(latents, 500.0, text).sample
...     _ = apply_feature_slicing(model, SlicingConfig(frame_chunks=3, spatial_chunks=4))
...     sliced = model(latents, 500.0, text).sample
>>> torch.allclose(plain, sliced, atol=1e-5)
True
>>> remove_feature_slicing(model)
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, is_dataclass, replace
from typing import Any

import torch
from torch import nn

from reelkit.accel._diffusers_compat import ModelHook, hook_names, own_hook_names, register_hook, remove_hooks
from reelkit.errors import ReelkitError

logger = logging.getLogger(__name__)

_BLOCK_HOOK = "reelkit_feature_slicing"
_MODEL_HOOK = "reelkit_feature_slicing_budget"
_PROBE_CHUNKS = (4, 8)  # chunk counts the max_memory planner measures


class SlicingError(ReelkitError, ValueError):
    """A slicing configuration or model that Feature Slicing cannot serve."""


_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


def parse_bytes(value: int | str) -> int:
    """``"1.5GiB"``, ``"800MB"`` or ``1024`` -> bytes."""
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmg]i?b?|b)?\s*", str(value).lower())
        if not match:
            raise SlicingError(f"{value!r} is not a memory size (try 2GiB or 800MB)")
        unit = match.group(2) or ""
        unit = unit if unit in _UNITS else unit + "b"
        number = float(match.group(1)) * _UNITS[unit]
    if number <= 0:
        raise SlicingError(f"a memory budget must be positive; got {value!r}")
    return int(number)


@dataclass
class SlicingConfig:
    """How Feature Slicing cuts the features of a video denoiser or decoder.

    Attributes:
        frame_chunks: slices of ``batch x frames`` that spatial operators run on (1: unsliced).
        spatial_chunks: slices of space (tokens, or the image width) that temporal operators run on;
            ``None``: the same as ``frame_chunks``.
        max_memory: a budget for the activations of one call (bytes or ``"2GiB"``); the chunk counts are
            then picked per input shape, overriding ``frame_chunks``/``spatial_chunks``.
        pipelined: on CUDA, overlap slices on ``max_in_flight`` streams; ignored on CPU.
        max_in_flight: slices in flight at once when pipelined (bounds the extra memory).
    """

    frame_chunks: int | None = 4
    spatial_chunks: int | None = None
    max_memory: int | str | None = None
    pipelined: bool = False
    max_in_flight: int = 2

    def __post_init__(self):
        for name in ("frame_chunks", "spatial_chunks", "max_in_flight"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise SlicingError(f"{name} must be a positive integer; got {value!r}")
        if self.frame_chunks is None and self.max_memory is None:
            raise SlicingError("give frame_chunks or max_memory")
        if self.max_memory is not None:
            self.max_memory = parse_bytes(self.max_memory)

    @property
    def chunks(self) -> tuple[int, int]:
        """``(frame_chunks, spatial_chunks)`` as used."""
        frames = self.frame_chunks or 1
        return frames, self.spatial_chunks or frames


def chunk_slices(size: int, chunks: int) -> list[slice]:
    """``chunks`` contiguous slices covering ``range(size)``, each ``ceil(size / chunks)`` long but the last
    (fewer when ``size < chunks``)."""
    step = max(1, math.ceil(size / max(1, chunks)))
    return [slice(start, min(start + step, size)) for start in range(0, size, step)]


class SliceRunner:
    """Runs one operator group over slices: in order, or overlapped on CUDA streams when pipelined."""

    def __init__(self, config: SlicingConfig):
        self.frame_chunks, self.spatial_chunks = config.chunks
        self.pipelined = config.pipelined
        self.max_in_flight = config.max_in_flight
        self.overwrite_block_inputs = False  # set by a container whose blocks' inputs die with the call
        self._streams: list[torch.cuda.Stream] = []

    def with_chunks(self, frame_chunks: int, spatial_chunks: int) -> SliceRunner:
        runner = SliceRunner.__new__(SliceRunner)
        runner.__dict__.update(self.__dict__, frame_chunks=frame_chunks, spatial_chunks=spatial_chunks)
        return runner

    def run(self, group: Callable[[slice], None], slices: Sequence[slice], device: torch.device) -> None:
        """Call ``group(s)`` for every slice; each call writes its result into a preallocated output."""
        if not (self.pipelined and device.type == "cuda" and len(slices) > 1):
            for s in slices:
                group(s)
            return
        main = torch.cuda.current_stream(device)
        while len(self._streams) < self.max_in_flight:
            self._streams.append(torch.cuda.Stream(device))
        for i, s in enumerate(slices):
            stream = self._streams[i % self.max_in_flight]
            # a stream starts slice i once everything queued before (inputs, slice i - max_in_flight) is done
            stream.wait_stream(main)
            with torch.cuda.stream(stream):
                group(s)
        for stream in self._streams:
            main.wait_stream(stream)


class _Output:
    """A block's output, allocated from its first slice and filled slice by slice (never concatenated)."""

    def __init__(self, size: int, dim: int = 0):
        self.size, self.dim, self.value = size, dim, None

    def write(self, index: slice, part: Any) -> None:
        if self.value is None:
            self.value = _map_tensors(lambda t: t.new_empty(t.shape[:self.dim] + (self.size,) + t.shape[self.dim + 1:]),
                                      part)
        _zip_tensors(lambda full, t: full.narrow(self.dim, index.start, index.stop - index.start).copy_(t),
                     self.value, part)


def _map_tensors(fn: Callable[[torch.Tensor], Any], value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, (tuple, list)):
        return type(value)(_map_tensors(fn, v) for v in value)
    if is_dataclass(value):
        return replace(value, **{f.name: _map_tensors(fn, getattr(value, f.name)) for f in fields(value)})
    return value


def _zip_tensors(fn: Callable[[torch.Tensor, torch.Tensor], Any], full: Any, part: Any) -> None:
    if isinstance(full, torch.Tensor):
        fn(full, part)
    elif isinstance(full, (tuple, list)):
        for f, p in zip(full, part, strict=True):
            _zip_tensors(fn, f, p)
    elif is_dataclass(full):
        for f in fields(full):
            _zip_tensors(fn, getattr(full, f.name), getattr(part, f.name))


def cut_rows(value: Any, s: slice, rows: int) -> Any:
    """``value[s]`` for a tensor whose leading axis holds the ``rows`` being sliced; anything else whole."""
    return value[s] if isinstance(value, torch.Tensor) and value.ndim and value.shape[0] == rows else value


def slice_rows(module: nn.Module, runner: SliceRunner, forward: Callable, *args, **kwargs) -> Any:
    """Spatial slicer: ``forward`` treats the rows of dim 0 (``B*F`` frames) independently, so it runs on
    ``frame_chunks`` slices of them; every tensor argument with the same leading size is sliced alike
    (``temb``, per-frame ``encoder_hidden_states``) and the rest is passed whole."""
    hidden = next(a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor))
    rows = hidden.shape[0]
    slices = chunk_slices(rows, runner.frame_chunks)
    if len(slices) == 1:
        return forward(*args, **kwargs)
    output = _Output(rows)

    def group(s: slice) -> None:
        output.write(s, forward(*(cut_rows(a, s, rows) for a in args),
                                **{k: cut_rows(v, s, rows) for k, v in kwargs.items()}))

    runner.run(group, slices, hidden.device)
    return output.value


# --------------------------------------------------------------------------------------------------------
# Normalisations whose statistics span a sliced axis: reduce over the full tensor first, then normalise
# slice by slice with those statistics (the official code normalises each slice alone, which is inexact).


def group_norm_statistics(norm: nn.GroupNorm, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and reciprocal std of ``norm``'s groups over all of ``x`` (B, C, ...): each (B, G), float32."""
    B = x.shape[0]
    var, mean = torch.var_mean(x.reshape(B, norm.num_groups, -1).float(), dim=-1, unbiased=False)
    return mean, torch.rsqrt(var + norm.eps)


def group_norm_apply(norm: nn.GroupNorm, x: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor) -> torch.Tensor:
    """``norm(x_full)`` restricted to the slice ``x`` (B, C, ...), given the full tensor's statistics."""
    B, C = x.shape[:2]
    G = norm.num_groups
    y = (x.float().reshape(B, G, -1) - mean[..., None]) * rstd[..., None]
    y = y.view(x.shape).to(x.dtype)
    if norm.affine:
        channel = (1, C) + (1,) * (x.ndim - 2)
        y = y * norm.weight.view(channel) + norm.bias.view(channel)
    return y


# --------------------------------------------------------------------------------------------------------
# The reelkit VideoDiT: spatial attention on (B*T) slices; then temporal attention, cross-attention and the
# MLP (all per token or per location) as one group on slices of space.


def slice_video_dit_block(block: nn.Module, runner: SliceRunner, forward: Callable, hidden_states: torch.Tensor,
                          encoder_hidden_states: torch.Tensor, temb: torch.Tensor, num_frames: int) -> torch.Tensor:
    """``VideoDiTBlock.forward`` on slices, through the block's own branch methods (so an edit to a branch is
    made once): spatial attention on ``frame_chunks`` slices of the ``B*T`` frames, then temporal attention,
    cross-attention and the MLP as one group on ``spatial_chunks`` slices of each video's locations."""
    x = hidden_states  # (B, T*S, C)
    B, N, C = x.shape
    T, S = num_frames, N // num_frames
    shift, scale, gate = block.modulation(temb)  # each (B, 4, 1, C)

    frames = x.view(B * T, S, C)
    # inside the VideoDiT's own loop a block's input is dead once the block returns, so with no other hook
    # reading it, each slice is written back over the input rather than into a second full-size tensor
    overwrite = runner.overwrite_block_inputs and hook_names(block) == {_BLOCK_HOOK}
    out = x if overwrite else torch.empty_like(x)
    out_frames = out.view(B * T, S, C)
    batch_of_frame = torch.arange(B * T, device=x.device) // T

    def spatial(s: slice) -> None:
        b = batch_of_frame[s]
        out_frames[s] = block.spatial_branch(frames[s], shift[b, 0], scale[b, 0], gate[b, 0])  # (n, S, C)

    runner.run(spatial, chunk_slices(B * T, runner.frame_chunks), x.device)

    locations = out.view(B, T, S, C)

    def temporal(b: int, s: slice) -> None:
        y = block.temporal_branch(locations[b, :, s].transpose(0, 1), shift[b, 1], scale[b, 1], gate[b, 1])
        tokens = y.transpose(0, 1).reshape(1, -1, C)  # (1, T*n, C)
        tokens = block.text_branch(tokens, shift[b, 2], scale[b, 2], gate[b, 2], encoder_hidden_states[b:b + 1])
        locations[b, :, s] = block.mlp_branch(tokens, shift[b, 3], scale[b, 3], gate[b, 3]).view(T, -1, C)

    for b in range(B):
        runner.run(lambda s, b=b: temporal(b, s), chunk_slices(S, runner.spatial_chunks), x.device)
    return out


def slice_video_dit(model: nn.Module, runner: SliceRunner, forward: Callable, *args, **kwargs) -> Any:
    """The VideoDiT itself: its patch embedding and output head are per token, so they run on
    ``spatial_chunks`` slices of the tokens (its blocks are sliced by their own hooks)."""
    model.token_chunks = runner.spatial_chunks
    runner.overwrite_block_inputs = not torch.is_grad_enabled()
    try:
        return forward(*args, **kwargs)
    finally:
        model.token_chunks = 1
        runner.overwrite_block_inputs = False


# --------------------------------------------------------------------------------------------------------
# Registry, hooks, apply/remove

Slicer = Callable[..., Any]
_SLICERS: dict[type, Slicer] = {}
_CONTAINERS: set[type] = set()  # sliced themselves, and the registered blocks inside them are sliced too


def register_slicer(module_class: type, slicer: Slicer = slice_rows, container: bool = False) -> None:
    """Slice every ``module_class`` found in a model with ``slicer(module, runner, forward, *args, **kwargs)``.

    A ``container`` (a whole model whose own layers it slices) keeps the registered blocks inside it
    sliced by their own slicers. The default, :func:`slice_rows`, fits any block that treats the rows of
    its first tensor (``B*F`` frames) independently, as 2-D ResNets, per-frame transformers and samplers do:

    >>> from torch import nn
    >>> class FrameMLP(nn.Module):
    ...     def forward(self, hidden_states):           # (B*F, S, C)
    ...         return hidden_states * 2
    >>> register_slicer(FrameMLP)
    """
    _SLICERS[module_class] = slicer
    if container:
        _CONTAINERS.add(module_class)


def _slicer_for(module: nn.Module) -> Slicer | None:
    """The slicer registered for ``module``'s exact class: a subclass may compute differently (MarDini's
    generator block is a ``VideoDiTBlock`` with another forward), so it is sliced only if registered itself."""
    return _SLICERS.get(type(module))


def _hooked_inside(block: nn.Module) -> bool:
    """Whether a layer inside ``block`` (not the block itself) carries a diffusers hook."""
    return any(own_hook_names(m) for m in block.modules() if m is not block and not _slicer_for(m))


class FeatureSlicingHook(ModelHook):
    """Runs its block through a slicer with the chunk counts of the shared runner."""

    def __init__(self, slicer: Slicer, plan: _Plan):
        super().__init__()
        self.slicer, self.plan = slicer, plan

    def new_forward(self, module: nn.Module, *args, **kwargs):
        if torch.is_grad_enabled() or _hooked_inside(module):
            # autograd would keep every slice's activations (nothing to save), and a hook on a layer inside
            # the block (a cache's monitor, PAB) would see one slice instead of the whole feature
            return self.fn_ref.original_forward(*args, **kwargs)
        return self.slicer(module, self.plan.runner, self.fn_ref.original_forward, *args, **kwargs)


class FeatureSlicingBudgetHook(ModelHook):
    """On the model: picks chunk counts for each new input shape so that activations fit ``max_memory``."""

    def __init__(self, plan: _Plan):
        super().__init__()
        self.plan = plan

    def new_forward(self, module: nn.Module, *args, **kwargs):
        forward = self.fn_ref.original_forward
        key = tuple(tuple(a.shape) for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor))
        if key not in self.plan.chosen:
            self.plan.chosen[key] = self.plan.choose(lambda: forward(*args, **kwargs), module)
        self.plan.runner = self.plan.base.with_chunks(*self.plan.chosen[key])
        return forward(*args, **kwargs)


class _Plan:
    """State the hooks of one model share: the config, the current runner and chunk choices per shape."""

    def __init__(self, config: SlicingConfig, device: torch.device):
        self.config, self.device = config, device
        self.base = SliceRunner(config)
        self.runner = self.base
        self.chosen: dict[tuple, tuple[int, int]] = {}

    def choose(self, call: Callable[[], Any], model: nn.Module) -> tuple[int, int]:
        """Measure the activation peak (``model``'s weights left out) at two chunk counts, fit ``peak = fixed
        + sliced / chunks`` and take the fewest chunks that fit the budget (the most the probe allows when
        none does), checked by one more measurement (raised while the measured peak is over)."""
        from reelkit.memory import peak_activation_bytes

        peaks = []
        with torch.no_grad():
            for chunks in _PROBE_CHUNKS:
                self.runner = self.base.with_chunks(chunks, chunks)
                peaks.append(peak_activation_bytes(call, model, device=self.device))
        (n1, n2), (p1, p2) = _PROBE_CHUNKS, peaks
        sliced = max(0.0, (p1 - p2) / (1 / n1 - 1 / n2))
        fixed = p1 - sliced / n1
        budget, most = self.config.max_memory, 4 * n2
        if fixed + sliced <= budget:
            return 1, 1
        if budget <= fixed + sliced / most:
            logger.warning("max_memory %.1f MiB is below what slicing can reach here (about %.1f MiB); "
                           "using %d chunks", budget / 2**20, (fixed + sliced / most) / 2**20, most)
            return most, most
        chunks = math.ceil(sliced / (budget - fixed))
        with torch.no_grad():
            for _ in range(3):  # the fit is only linear: measure the pick, add chunks while it is over budget
                self.runner = self.base.with_chunks(chunks, chunks)
                if chunks >= most or peak_activation_bytes(call, model, device=self.device) <= budget:
                    break
                chunks = min(most, max(chunks + 1, math.ceil(chunks * 1.5)))
        return chunks, chunks


def free_memory_bytes(device: torch.device | str = "cpu") -> int:
    """Memory free for activations now: the CUDA device's free memory, or the host's available RAM."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    import psutil

    return int(psutil.virtual_memory().available)


def slicing_config_from_option(value: str | None, device: torch.device | str = "cpu") -> SlicingConfig | None:
    """The CLI's ``--slice``: ``N`` chunks, a budget (``2GiB``), ``auto`` (90% of the free memory) or None."""
    if value is None:
        return None
    value = value.strip().lower()
    if value == "auto":
        return SlicingConfig(max_memory=int(0.9 * free_memory_bytes(device)))
    if value.isdigit():
        if int(value) < 1:
            raise SlicingError(f"--slice {value}: give at least 1 chunk")
        return SlicingConfig(frame_chunks=int(value))
    try:
        return SlicingConfig(max_memory=parse_bytes(value))
    except SlicingError:
        raise SlicingError(f"--slice {value!r}: give a chunk count (8), a memory budget (2GiB) or auto") from None


def _import_model_slicers() -> None:
    from reelkit.accel import slicing_models, slicing_unets  # noqa: F401  (register diffusers' UNets, VAEs)


def apply_feature_slicing(model: nn.Module, config: SlicingConfig | None = None) -> nn.Module:
    """Slice every registered block of ``model`` (a denoiser or a VAE) as ``config`` says; returns ``model``.

    Raises :class:`SlicingError` when ``model`` holds no block Feature Slicing knows (register one with
    :func:`register_slicer`) or is sliced already.
    """
    _import_model_slicers()
    config = config or SlicingConfig()
    if getattr(model, "_feature_slicing", None) is not None:
        raise SlicingError(f"{type(model).__name__} is sliced already; call remove_feature_slicing first")
    plan = _Plan(config, next(model.parameters(), torch.empty(0)).device)
    blocks = [(m, slicer) for m in model.modules() if (slicer := _slicer_for(m)) is not None]
    # a registered block inside another registered block runs inside its parent's slices already
    inner = {id(child) for m, _ in blocks if type(m) not in _CONTAINERS for child in m.modules() if child is not m}
    blocks = [(m, slicer) for m, slicer in blocks if id(m) not in inner]
    if not blocks:
        raise SlicingError(f"Feature Slicing knows no block of {type(model).__name__}; register one with "
                           f"reelkit.accel.slicing.register_slicer")
    for module, slicer in blocks:
        register_hook(module, FeatureSlicingHook(slicer, plan), _BLOCK_HOOK)
    if config.max_memory is not None:
        register_hook(model, FeatureSlicingBudgetHook(plan), _MODEL_HOOK)
    model._feature_slicing = plan
    return model


def remove_feature_slicing(model: nn.Module) -> None:
    """Undo :func:`apply_feature_slicing`; the model is the original again."""
    if getattr(model, "_feature_slicing", None) is None:
        return
    remove_hooks(model, _BLOCK_HOOK, _MODEL_HOOK)
    model._feature_slicing = None


def feature_slicing_chunks(model: nn.Module) -> tuple[int, int] | None:
    """``(frame_chunks, spatial_chunks)`` of the model's last call, or None when it is not sliced."""
    plan = getattr(model, "_feature_slicing", None)
    return None if plan is None else (plan.runner.frame_chunks, plan.runner.spatial_chunks)


def _register_reelkit_models() -> None:
    from reelkit.models.dit import VideoDiT, VideoDiTBlock

    register_slicer(VideoDiTBlock, slice_video_dit_block)
    register_slicer(VideoDiT, slice_video_dit, container=True)


_register_reelkit_models()

__all__ = ["SliceRunner", "SlicingConfig", "SlicingError", "apply_feature_slicing", "chunk_slices", "cut_rows",
           "feature_slicing_chunks", "free_memory_bytes", "group_norm_apply", "group_norm_statistics", "parse_bytes",
           "register_slicer", "remove_feature_slicing", "slice_rows", "slicing_config_from_option"]
