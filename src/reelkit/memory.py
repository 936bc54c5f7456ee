"""Peak memory of a call: CUDA's allocator statistics on a GPU, torch's ``MemTracker`` on a CPU.

Core: Feature Slicing's planner and the memory bench both measure with it.

>>> import torch
>>> from reelkit.memory import peak_memory_bytes
>>> peak_memory_bytes(lambda: torch.zeros(1024, 1024)) >= 4 * 1024 * 1024
True
"""

from __future__ import annotations

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
