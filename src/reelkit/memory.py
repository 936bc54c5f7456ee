"""Peak memory of a call: CUDA's allocator statistics on a GPU, torch's ``MemTracker`` on a CPU.

Core: Feature Slicing's planner and the memory bench both measure with it.

>>> import torch
>>> from reelkit.memory import peak_memory_bytes
>>> peak_memory_bytes(lambda: torch.zeros(1024, 1024)) >= 4 * 1024 * 1024
True
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch


def peak_memory_bytes(fn: Callable[[], object], *modules: torch.nn.Module,
                      device: torch.device | str | None = None) -> int:
    """Peak bytes held while ``fn()`` runs: its allocations plus the weights of ``modules``."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device))
    tracker = _peak_tracker()
    if modules:
        tracker.track_external(*modules)
    with tracker:
        fn()
    snapshot = tracker.get_tracker_snapshot("peak")
    return int(sum(stats["Total"] for stats in snapshot.values()))


def peak_activation_bytes(fn: Callable[[], object], model: torch.nn.Module,
                          device: torch.device | str | None = None) -> int:
    """Peak bytes of the tensors ``fn()`` allocates (activations and outputs), ``model``'s weights left out:
    CUDA's peak minus the weights, or on a CPU the tracker's peak with the weights registered as such (left
    unregistered, the CPU tracker counts those a call touches through views as activations)."""
    weights = sum(t.numel() * t.element_size() for t in itertools.chain(model.parameters(), model.buffers()))
    if device is not None and torch.device(device).type == "cuda":
        return peak_memory_bytes(fn, device=device) - weights
    from torch.distributed._tools.mem_tracker import _MemRefType

    tracker = _peak_tracker()
    tracker.track_external(model)
    with tracker:
        fn()
    snapshot = tracker.get_tracker_snapshot("peak")
    held = (_MemRefType.PARAM, _MemRefType.BUFFER, "Total")
    return int(sum(size for stats in snapshot.values() for kind, size in stats.items() if kind not in held))


def _peak_tracker():
    """torch's MemTracker counting the global peak only. Its per-module statistics cost a deep copy of
    the snapshot at every module call and refuse a top-level module called twice (chunked decoding,
    per-frame loops); the global peak needs neither, so the module hooks do nothing here."""
    from torch.distributed._tools.mem_tracker import MemTracker

    class PeakTracker(MemTracker):
        def _pre_fw_hook(self, module, inputs):
            pass

        def _post_fw_hook(self, module, inputs, outputs):
            pass

        def _pre_bw_hook(self, module, args):
            pass

        def _post_bw_hook(self, module, args):
            pass

    return PeakTracker()
