"""``reelkit info`` and ``reelkit bench``: what is bundled, and the measured suites."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from reelkit.cli.app import app
from reelkit.cli.common import check_output, console, progress_bars
from reelkit.errors import ReelkitError
from reelkit.eval.bench import SUITES

# --------------------------------------------------------------------------------------------- info

@app.command()
def info() -> None:
    """Versions, compute device and bundled models."""
    import importlib.metadata as md

    import torch

    from reelkit.paths import bundled_models, shared_data_clips

    table = Table(show_header=False, box=None)
    for package in ("reelkit", "torch", "diffusers", "accelerate", "peft", "safetensors", "av", "torchmetrics"):
        try:
            table.add_row(package, md.version(package))
        except md.PackageNotFoundError:
            table.add_row(package, "not installed")
    device = f"cuda ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "cpu"
    table.add_row("device", f"{device}, {torch.get_num_threads()} CPU threads")
    models = bundled_models()
    table.add_row("bundled models", ", ".join(models) if models else "none yet")
    clips = shared_data_clips()
    table.add_row("shared clips", ", ".join(c.name for c in clips) if clips else "none found")
    console.print(table)


# -------------------------------------------------------------------------------------------- bench

@app.command()
def bench(
    suite: Annotated[str, typer.Argument(help=f"Suite to run: {', '.join(SUITES)}.")],
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the report here.")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="A smaller run (under 3 minutes on 2 CPU cores).")] = False,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    repeats: Annotated[int | None, typer.Option(help="Timed repeats per row (median reported).")] = None,
) -> None:
    """Measure a suite side by side in one process and print (and optionally save) the figures."""
    from reelkit.eval.bench import load_suite, run_suite, write_report

    load_suite(suite)  # unknown suite: fail before any work
    if json_path is not None:
        check_output(json_path, (".json",))
    if repeats is not None and repeats < 1:
        raise ReelkitError("--repeats must be at least 1")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ReelkitError(f"unknown device '{device}'; use cpu or cuda")
    with progress_bars() as task:
        report = run_suite(suite, quick=quick, device=device, repeats=repeats, progress=task, report_path=json_path)
    _print_rows(report)
    if json_path is not None:
        write_report(report, json_path)
        console.print(f"wrote {json_path}")


def _print_rows(report: dict) -> None:
    rows = report["rows"]
    keys = list(dict.fromkeys(k for row in rows for k in row))
    table = Table(title=f"bench {report['suite']} ({report['machine']['device']})")
    for key in keys:
        table.add_column(key, justify="left" if key == "method" else "right")
    for row in rows:
        table.add_row(*(_format(row.get(k)) for k in keys))
    Console(width=max(console.width, 160)).print(table)  # figures stay readable when piped to a log


def _format(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
