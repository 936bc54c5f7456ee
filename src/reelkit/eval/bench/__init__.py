"""``reelkit bench``: side-by-side measurements in one process, written as JSON.

A suite is a module with ``run(ctx: BenchContext) -> list[dict]``, listed in :data:`SUITES` and
imported only when asked for (suites may import heavy models). Each row has a ``method`` and figures
with suffixed names (``latency_s``, ``speedup``, ``psnr_db``, ``ssim``, ``peak_mem_bytes``, ``flops``).
The report layout::

    {"suite", "created", "machine": {cpu, cores, gpu, torch, diffusers, ...},
     "settings": {...}, "rows": [{"method": str, ...figures...}]}

>>> from reelkit.eval.bench import run_suite
>>> report = run_suite("world", quick=True)  # doctest: +SKIP
>>> report["rows"][0]["method"]  # doctest: +SKIP
'render'
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from reelkit.errors import ReelkitError
from reelkit.files import atomic_path, finite_or_null

if TYPE_CHECKING:
    import torch

    from reelkit.eval.bench.harness import Timing

SUITES: dict[str, str] = {
    "world": "reelkit.eval.bench.world",
    "vae": "reelkit.eval.bench.vae",
    "generate": "reelkit.eval.bench.generate",
    "cache": "reelkit.eval.bench.cache",
    "rehash": "reelkit.eval.bench.rehash",
    "memory": "reelkit.eval.bench.memory",
    "distill": "reelkit.eval.bench.distill",
    "mardini": "reelkit.eval.bench.mardini",
    "parallel": "reelkit.eval.bench.parallel",
    "tune": "reelkit.eval.bench.tune",
    "budget": "reelkit.eval.bench.budget",
    "studio": "reelkit.studio.bench",  # lives with the studio (a layer above eval), loaded by name
}
"""Suite name -> module defining ``run(ctx)``. Later capabilities add their suite here."""


def _torch():
    import torch  # not at import time: the CLI reads SUITES for its help and should start fast

    return torch


@dataclass
class BenchContext:
    """What a suite gets: the run's settings and the shared measuring tools.

    ``progress(description, total)`` returns a callable to advance a progress bar by one step.
    """

    quick: bool = False
    device: torch.device = field(default_factory=lambda: _torch().device("cpu"))
    warmup: int = 1
    repeats: int = 3
    settings: dict = field(default_factory=dict)
    progress: Callable[[str, int], Callable[[], None]] = lambda description, total: (lambda: None)
    report_path: Path | None = None  # where the JSON goes; suites save figures (PNG) beside it

    def artifact(self, name: str) -> Path | None:
        """``<report stem>_<name>`` next to the JSON report, or ``None`` when no report is written."""
        if self.report_path is None:
            return None
        return self.report_path.with_name(f"{self.report_path.stem}_{name}")

    def time(self, fn: Callable[[], object], on_repeat: Callable[[], None] | None = None) -> Timing:
        from reelkit.eval.bench.harness import measure_latency

        return measure_latency(fn, self.warmup, self.repeats, self.device, on_repeat)

    def peak_memory(self, fn: Callable[[], object], *modules: torch.nn.Module) -> int:
        from reelkit.memory import peak_memory_bytes

        return peak_memory_bytes(fn, *modules, device=self.device)

    def flops(self, fn: Callable[[], object]) -> int:
        from reelkit.eval.bench.harness import count_flops

        return count_flops(fn)


def load_suite(name: str):
    if name not in SUITES:
        raise ReelkitError(f"unknown bench suite '{name}'; known suites: {', '.join(sorted(SUITES))}")
    return importlib.import_module(SUITES[name])


def run_suite(name: str, quick: bool = False, device: str | torch.device = "cpu", repeats: int | None = None,
              progress: Callable[[str, int], Callable[[], None]] | None = None,
              report_path: str | os.PathLike | None = None) -> dict:
    """Run one suite and return its report (see the module docstring for the layout); suites that draw
    figures save them next to ``report_path``."""
    suite = load_suite(name)
    import torch

    from reelkit.eval.bench.harness import machine_info

    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ReelkitError("--device cuda asked for, but torch sees no CUDA device here")
    ctx = BenchContext(quick=quick, device=device, repeats=repeats or (2 if quick else 5),
                       report_path=Path(report_path) if report_path is not None else None)
    if progress is not None:
        ctx.progress = progress
    ctx.settings.update({"quick": quick, "warmup": ctx.warmup, "repeats": ctx.repeats})
    created = datetime.now(UTC).isoformat(timespec="seconds")
    rows = suite.run(ctx)
    return {"suite": name, "created": created, "machine": machine_info(device), "settings": ctx.settings,
            "rows": rows}


def write_report(report: dict, path: str | os.PathLike) -> Path:
    """Write a report as indented JSON, atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(finite_or_null(report), indent=2, allow_nan=False) + "\n")
    return path

