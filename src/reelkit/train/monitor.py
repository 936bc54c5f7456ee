"""Adherence during training: a run that shows whether it is learning the prompt, not only the loss.

Every ``eval_every`` steps a recipe hands its current (EMA) pipeline to :class:`AdherenceMonitor`, which
generates a few held-out prompts with fixed seeds, asks the judge what it sees, appends per-attribute
adherence to ``output_dir/adherence.csv``, redraws ``adherence.png`` beside ``loss.png``, and says whether
this is the best reading so far (mean of shape, colour, motion and count), so the recipe can keep that checkpoint.

>>> import tempfile, torch
>>> from reelkit.models.judge import WorldJudge
>>> from reelkit.pipelines.text_to_video import tiny_pipeline
>>> from reelkit.train.monitor import AdherenceMonitor
>>> judge = WorldJudge(channels=(8, 8, 8, 16), feature_dim=8).eval()
>>> folder = tempfile.mkdtemp()
>>> monitor = AdherenceMonitor(folder, judge, prompts=2, frames=5, size=32, steps=1)
>>> scores, best = monitor.evaluate(tiny_pipeline(), step=10)
>>> sorted(scores), best
(['color', 'count', 'mean', 'motion', 'shape'], True)
"""

from __future__ import annotations

from pathlib import Path

import torch

HEADER = "step,shape,color,motion,count,mean"
# the mean that picks the best checkpoint; the object count is in it because a model can read well on the
# other three while drawing a second, unasked object for every prompt (the object-weighted teacher did)
SCORED = ("shape", "color", "motion", "count")


class AdherenceMonitor:
    """Judge-read adherence of a pipeline on the first ``prompts`` held-out prompts (generate-bench's set)."""

    def __init__(self, output_dir: str | Path, judge, prompts: int = 16, frames: int = 17, size: int = 64,
                 steps: int = 25, guidance: float = 5.0, seed: int = 0, resume_step: int = 0):
        from reelkit.eval.bench.generate import heldout_prompts
        from reelkit.train.common import start_csv_log

        self.output_dir = Path(output_dir)
        self.judge = judge
        self.prompts = heldout_prompts(prompts)
        self.frames, self.size, self.steps, self.guidance, self.seed = frames, size, steps, guidance, seed
        self.csv_path = start_csv_log(self.output_dir / "adherence.csv", HEADER, resume_step)
        rows = [line.split(",") for line in self.csv_path.read_text().splitlines()[1:] if line]
        self.best = max((float(row[-1]) for row in rows), default=float("-inf"))

    @torch.no_grad()
    def evaluate(self, pipe, step: int) -> tuple[dict[str, float], bool]:
        """Generate, judge and log; returns ``(scores, is_best)`` with ``scores`` per attribute and ``mean``."""
        from reelkit.eval.adherence import mean_adherence
        from reelkit.eval.compare import adherence_per_prompt

        scores = mean_adherence(adherence_per_prompt(pipe, self.judge, self.prompts, self.seed, self.steps,
                                                     self.guidance, self.frames, self.size,
                                                     batch_size=len(self.prompts)))
        scores["mean"] = sum(scores[k] for k in SCORED) / len(SCORED)
        with self.csv_path.open("a") as handle:
            handle.write(f"{step}," + ",".join(f"{scores[k]:.4f}" for k in HEADER.split(",")[1:]) + "\n")
        self.plot()
        is_best = scores["mean"] > self.best
        self.best = max(self.best, scores["mean"])
        return scores, is_best

    def plot(self) -> None:
        """Redraw ``adherence.png``: each attribute and the mean against the step."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        lines = self.csv_path.read_text().splitlines()
        names = lines[0].split(",")[1:]
        rows = [[float(v) for v in line.split(",")] for line in lines[1:] if line]
        if not rows:
            return
        fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
        for column, name in enumerate(names, start=1):
            ax.plot([r[0] for r in rows], [r[column] for r in rows], marker="o", label=name,
                    linewidth=2.5 if name == "mean" else 1.2)
        ax.set_xlabel("step")
        ax.set_ylabel(f"adherence ({len(self.prompts)} held-out prompts)")
        ax.set_ylim(0, 1.02)
        ax.legend(loc="lower right", fontsize=8)
        fig.tight_layout()
        fig.savefig(self.output_dir / "adherence.png")
        plt.close(fig)


__all__ = ["AdherenceMonitor"]
