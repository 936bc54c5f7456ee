"""Gather the ladder's adherence curves into one CSV and one plot (shape and colour against CPU-minutes).

    python scripts/ladder_curves.py docs/bench/ladder_rung1 "text, objects x1.5, weight 9=runs/ladder/r1_x1.5_ow9" ...

Each argument after the output stem is ``LABEL=RUN_FOLDER`` (its ``adherence.csv``) or ``LABEL=CSV`` (a file with
the same columns). Writes ``STEM.csv`` (design, step, cpu_minutes, shape, color, count) and ``STEM.png``.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path


def read_curve(path: Path) -> list[dict[str, float]]:
    path = path / "adherence.csv" if path.is_dir() else path
    with path.open() as handle:
        return [{k: float(v) for k, v in row.items() if k in ("step", "cpu_minutes", "shape", "color", "count")}
                for row in csv.DictReader(handle)]


def main(stem: str, designs: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = {}
    for item in designs:
        label, _, source = item.rpartition("=")
        curves[label] = read_curve(Path(source))
    with open(f"{stem}.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["design", "step", "cpu_minutes", "shape", "color", "count"])
        for label, rows in curves.items():
            for row in rows:
                writer.writerow([label, int(row["step"]), f"{row['cpu_minutes']:.1f}", f"{row['shape']:.3f}",
                                 f"{row['color']:.3f}", f"{row['count']:.3f}"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
    for label, rows in curves.items():
        minutes = [r["cpu_minutes"] for r in rows]
        for ax, key in zip(axes, ("shape", "color"), strict=True):
            ax.plot(minutes, [r[key] for r in rows], marker="o", label=label)
    for ax, key in zip(axes, ("shape", "colour"), strict=True):
        ax.set_xlabel("CPU-minutes of training")
        ax.set_ylabel(f"judge-read {key} adherence")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0].axhline(1 / 6, color="grey", linestyle=":", label="chance (1/6)")
    axes[0].axhline(0.85, color="black", linestyle="--", label="rung-1 target")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(f"{stem}.png")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
