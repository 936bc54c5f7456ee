"""Measurement tools every bench suite shares: latency, peak memory, FLOPs and the machine record.

* latency: warm-up calls, then ``repeats`` timed calls; the median is reported (CUDA is synchronised).
* peak memory: ``torch.distributed._tools.mem_tracker.MemTracker`` on CPU (tensors allocated during
  the call, plus the parameters and buffers of the modules passed in); on CUDA
  ``torch.cuda.max_memory_allocated`` over the call.
* FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` (matmuls, convolutions, attention).

>>> import torch
>>> from reelkit.eval.bench.harness import count_flops, measure_latency, peak_memory_bytes
>>> layer = torch.nn.Linear(64, 64)
>>> x = torch.randn(8, 64)
>>> count_flops(lambda: layer(x))  # 2 * 8 * 64 * 64
65536
>>> peak_memory_bytes(lambda: layer(x), layer) >= 64 * 64 * 4
True
>>> measure_latency(lambda: layer(x), warmup=1, repeats=3).median_s > 0
True
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from reelkit.memory import peak_memory_bytes  # noqa: F401  (the harness's API; core, so accel measures with it)


@dataclass(frozen=True)
class Timing:
    median_s: float
    times_s: tuple[float, ...]


def _sync(device: torch.device | str | None) -> None:
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def measure_latency(fn: Callable[[], object], warmup: int = 1, repeats: int = 3,
                    device: torch.device | str | None = None,
                    on_repeat: Callable[[], None] | None = None) -> Timing:
    """Median wall-clock seconds of ``fn()`` over ``repeats`` calls after ``warmup`` untimed ones."""
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
        if on_repeat is not None:
            on_repeat()
    return Timing(statistics.median(times), tuple(times))


def load_generator_and_judge(pipeline=None, judge=None):
    """The pipeline (``pipeline()``, else the bundled teacher; progress bars off) and the judge (``judge()``,
    else the bundled one) that the generation suites measure; tests pass tiny loaders."""
    from reelkit.models.judge import load_judge
    from reelkit.pipelines.text_to_video import load_text_to_video

    pipe = pipeline() if pipeline is not None else load_text_to_video()
    pipe.set_progress_bar_config(disable=True)
    return pipe, (judge() if judge is not None else load_judge())


def heldout_prompts(count: int, calibration: int = 0) -> tuple[list[str], list[str]]:
    """``count`` evaluation prompts and ``calibration`` other ones, from the demo world's held-out seeds."""
    from reelkit.data.datasets import heldout_seeds
    from reelkit.data.world import random_scene

    prompts = [random_scene(seed)[1] for seed in heldout_seeds(count + calibration)]
    return prompts[:count], prompts[count:]


def count_flops(fn: Callable[[], object]) -> int:
    """Floating-point operations of ``fn()`` as counted by ``FlopCounterMode``."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        fn()
    return int(counter.get_total_flops())


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device | str = "cpu") -> dict:
    """What the figures were measured on: CPU, cores, GPU, library versions."""
    import diffusers

    device = torch.device(device)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu,
        "device": str(device),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
