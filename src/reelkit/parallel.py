"""Context parallelism on diffusers' own engine: one video's tokens split over several processes.

reelkit does not run a parallel engine of its own. :func:`enable_context_parallel` hands a model to diffusers'
``enable_parallelism`` with a ``ContextParallelConfig`` (Ulysses or ring attention) after the checks that turn
its asserts and hangs into one-line errors, and :func:`parallel_group` gives the caches the process group to
reduce their decisions over, so every rank computes and reuses the same steps (cache-dit's rule; diffusers'
own content-adaptive caches decide per rank).

Launch with ``torchrun``; on a CPU the group is gloo and only Ulysses runs (ring attention needs an attention
backend that returns the log-sum-exp: flash, cuDNN or Sage, which are CUDA kernels).

>>> from reelkit.parallel import parse_parallel
>>> parse_parallel("ulysses=2")
('ulysses', 2)
"""

from __future__ import annotations

import os
import warnings
from contextlib import contextmanager

import torch
import torch.distributed as dist

from reelkit.errors import ReelkitError

KINDS = ("ulysses", "ring")
# diffusers' backends that return the log-sum-exp that ring attention merges its partial results with
RING_BACKENDS = ("flash", "flash_hub", "_flash_3_hub", "_native_cudnn", "_native_flash", "sage", "sage_hub")
# diffusers' caches that skip on a content-dependent test: each rank would decide on its own tokens
INCONSISTENT_HOOKS = ("fbc_", "mag_cache", "sea_cache")


class ParallelError(ReelkitError):
    """A context-parallel setting that cannot run (printed as one ``error:`` line by the command line)."""


def parse_parallel(text: str) -> tuple[str, int]:
    """``"ulysses=N"`` or ``"ring=N"`` to ``(kind, N)``."""
    kind, _, degree = text.partition("=")
    if kind not in KINDS or not degree.isdigit() or int(degree) < 1:
        raise ParallelError(f"--parallel takes ulysses=N or ring=N with N >= 1, got {text!r}")
    return kind, int(degree)


def launched_processes() -> int:
    """The process count torchrun (or accelerate) launched this process with; 1 when run alone."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_process_group() -> tuple[int, int]:
    """Join torchrun's process group (gloo on CPU, NCCL on CUDA) once; returns ``(rank, world size)``."""
    if launched_processes() <= 1:
        raise ParallelError("--parallel needs several processes: launch with torchrun --nproc_per_node N -m reelkit")
    if not dist.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo")
    return dist.get_rank(), dist.get_world_size()


@contextmanager
def _cpu_device_count():
    # diffusers 0.42 picks the rank's device as ``rank % torch.accelerator.device_count()``, which is a division
    # by zero on a machine without an accelerator; on CPU every rank's device is simply "cpu"
    if torch.accelerator.device_count() > 0:
        yield
        return
    original = torch.accelerator.device_count
    torch.accelerator.device_count = lambda: 1
    try:
        yield
    finally:
        torch.accelerator.device_count = original


def attention_backend(model: torch.nn.Module) -> str:
    """The attention backend the model's context-parallel attention will use (diffusers' active one if unset)."""
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    for module in model.modules():
        processor = getattr(module, "processor", None)
        if processor is not None and hasattr(processor, "_parallel_config"):
            backend = getattr(processor, "_attention_backend", None)
            if backend is not None:
                return str(getattr(backend, "value", backend))
            break
    return _AttentionBackendRegistry.get_active_backend()[0].value


def enable_context_parallel(model: torch.nn.Module, kind: str, degree: int):
    """Split ``model``'s tokens over ``degree`` processes with diffusers' engine; the world may hold several such
    groups (``world = data-parallel x degree``), each working on its own videos. Returns the device mesh, whose
    ``"dp"`` dimension says which group this process is in.

    >>> # torchrun --nproc_per_node 2 script.py
    >>> # enable_context_parallel(pipe.transformer, "ulysses", 2)
    """
    from diffusers import ContextParallelConfig

    _, world = init_process_group()
    if kind not in KINDS:
        raise ParallelError(f"unknown parallel kind {kind!r}; choose {' or '.join(KINDS)}")
    if degree < 2 or world % degree:
        raise ParallelError(f"--parallel {kind}={degree} needs a degree >= 2 that divides the {world} processes")
    if getattr(model, "_cp_plan", None) is None:
        raise ParallelError(f"{type(model).__name__} has no context-parallel plan (_cp_plan) in diffusers")
    heads = getattr(model.config, "num_attention_heads", None)
    if kind == "ulysses" and heads and heads % degree:
        raise ParallelError(f"ulysses={degree} splits the {heads} attention heads; use a degree that divides {heads}")
    backend = attention_backend(model)
    if kind == "ring" and backend not in RING_BACKENDS:
        raise ParallelError(f"ring attention needs an attention backend that returns the log-sum-exp "
                            f"({', '.join(RING_BACKENDS[:5])}; CUDA kernels), not {backend!r}; use ulysses={degree}")
    refuse_inconsistent_caches(model)
    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    shape = (world // degree, degree if kind == "ring" else 1, degree if kind == "ulysses" else 1)
    mesh = dist.device_mesh.init_device_mesh(device_type, shape, mesh_dim_names=("dp", "ring", "ulysses"))
    config = ContextParallelConfig(**{f"{kind}_degree": degree}, mesh=mesh)
    # diffusers' own gather still calls a collective torch deprecates: its warning says nothing a user can act on
    warnings.filterwarnings("ignore", message=".*all_gather_tensor.* is deprecated", category=FutureWarning)
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # its "experimental feature" notice, once per rank
    try:
        with _cpu_device_count():
            model.enable_parallelism(config=config)
    except (ValueError, RuntimeError) as error:  # diffusers' refusals, e.g. a backend without context parallelism
        raise ParallelError(f"context parallelism: {str(error).splitlines()[0]}") from None
    finally:
        diffusers_logging.set_verbosity(level)
    return mesh


def parallel_group(model: torch.nn.Module):
    """The process group ``model``'s tokens are split over, or None when it is not context-parallel."""
    config = getattr(model, "_parallel_config", None)
    cp = getattr(config, "context_parallel_config", None)
    if cp is None or cp._flattened_mesh is None or cp._flattened_mesh.size() < 2:
        return None
    return cp._flattened_mesh.get_group()


def all_reduce_sum(tensor: torch.Tensor, group) -> torch.Tensor:
    """``tensor`` summed over ``group`` (returned as is without one): the one small reduction a cache makes."""
    if group is None:
        return tensor
    out = tensor.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
    return out


def all_gather_cat(tensor: torch.Tensor, group, dim: int) -> torch.Tensor:
    """The shards of ``tensor`` from every rank of ``group``, concatenated along ``dim`` in rank order."""
    if group is None:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, tensor.contiguous(), group=group)
    return torch.cat(parts, dim)


def refuse_inconsistent_caches(model: torch.nn.Module) -> None:
    """A one-line error if ``model`` carries one of diffusers' content-adaptive caches, which would decide on
    each rank's own tokens (different steps on different ranks: wrong videos or a hang)."""
    names = (name for module in model.modules() for name in getattr(getattr(module, "_diffusers_hook", None),
                                                                      "hooks", {}) or {})
    bad = [name for name in names if name.startswith(INCONSISTENT_HOOKS)]
    if bad:
        raise ParallelError(f"{bad[0]} decides on each rank's own tokens and is not consistent under context "
                            "parallelism; use reelkit's AdaCache (it reduces its decision over the ranks)")


def check_token_split(model: torch.nn.Module, latent_shape: tuple[int, ...]) -> None:
    """A one-line error unless the tokens of ``(B, C, T, H, W)`` latents divide evenly over the parallel group."""
    group = parallel_group(model)
    if group is None:
        return
    degree = dist.get_world_size(group)
    config = model.config
    patch = config.patch_size
    if isinstance(patch, int):  # VideoDiT: each frame's locations are split
        tokens, what = (latent_shape[3] // patch) * (latent_shape[4] // patch), "tokens per frame"
    else:  # (t, h, w) patches, e.g. Wan: the whole token sequence is split
        tokens = (latent_shape[2] // patch[0]) * (latent_shape[3] // patch[1]) * (latent_shape[4] // patch[2])
        what = "tokens"
    if tokens % degree:
        raise ParallelError(f"the {tokens} {what} of this size do not split over {degree} processes; choose a size "
                            f"whose token count is a multiple of {degree}")


__all__ = ["KINDS", "ParallelError", "all_gather_cat", "all_reduce_sum", "attention_backend", "check_token_split",
           "enable_context_parallel", "init_process_group", "launched_processes", "parallel_group", "parse_parallel",
           "refuse_inconsistent_caches"]
