"""The base every training recipe builds on: a small class, as torchtune writes its recipes.

:meth:`Recipe.setup` builds the run from one-purpose pieces, always in the same order (accelerate restores a
checkpoint by the order things were registered, so the order is part of the checkpoint format)::

    start_run -> _setup_data -> _setup_models -> _setup_optimizer -> _prepare -> load_checkpoint -> _setup_logs

:meth:`Recipe.run` is the one loop every recipe shares: :meth:`train_step` until ``max_steps``, figures
averaged over each logging window to the console and ``output_dir/loss.csv``, :meth:`after_step` (e.g. an
evaluation), atomic checkpoints every ``save_every`` steps and at the time limit, and at the end
:meth:`export` on the main process. A recipe supplies the ``_setup_*`` pieces, ``train_step`` and
``export``; its seed stream is ``seed + 7919 * process + step``, so a resumed run draws fresh noise.

>>> from reelkit.train.recipe import Recipe
>>> sorted(name for name in vars(Recipe) if name.startswith("_setup_"))
['_setup_data', '_setup_logs', '_setup_models', '_setup_optimizer']
"""

from __future__ import annotations

from pathlib import Path

import torch

from reelkit.train.common import (
    StepClock,
    checkpoint_when_due,
    load_checkpoint,
    start_loss_log,
    start_run,
)


class Recipe:
    """One training recipe over a config dataclass (``output_dir``, ``max_steps``, ``save_every``,
    ``log_every``, ``time_limit_minutes``, ``seed``, ``threads``)."""

    figures: tuple[str, ...] = ("loss",)  # what train_step returns, in loss.csv's column order
    log_csv: bool = True  # write output_dir/loss.csv (step, figures..., lr, seconds_per_step)
    log_lr: bool = True  # a recipe without a learning-rate schedule leaves the lr column out
    labels: tuple[str, ...] = ()  # text columns logged before the figures (e.g. MarDini's stage): see label_values

    def __init__(self, config):
        self.config = config
        self.scheduler = None  # a learning-rate schedule, when the recipe has one (logged as lr)

    # ------------------------------------------------------------------------------------------ setup

    def setup(self) -> None:
        self.accelerator, self.output_dir = start_run(self.config, self._kwargs_handlers())
        self._setup_data()
        self._setup_models()
        self._setup_optimizer()
        self._prepare()
        self.step = load_checkpoint(self.accelerator, self.output_dir, self.config)
        process = self.accelerator.process_index
        self.generator = torch.Generator().manual_seed(self.config.seed + 7919 * process + self.step)
        self._setup_logs()

    def _kwargs_handlers(self) -> list | None:
        return None

    def _setup_data(self) -> None:
        """Datasets, caches and loaders."""

    def _setup_models(self) -> None:
        raise NotImplementedError

    def _setup_optimizer(self) -> None:
        raise NotImplementedError

    def _prepare(self) -> None:
        """``accelerator.prepare`` and ``register_for_checkpointing``, in the order the checkpoints hold them."""
        raise NotImplementedError

    def _setup_logs(self) -> None:
        header = ",".join(("step", *self.labels, *self.figures, *(("lr",) if self.log_lr else ()),
                           "seconds_per_step"))
        if self.log_csv:
            self.csv_path = start_loss_log(self.accelerator, self.output_dir, header, self.step)
        elif self.step:
            self.accelerator.print(f"resumed from {self.output_dir / 'checkpoint'} at step {self.step}")

    # ------------------------------------------------------------------------------------------ loop

    def train_step(self) -> dict[str, float]:
        """One optimisation step; returns :attr:`figures` (floats) for the log."""
        raise NotImplementedError

    def label_values(self) -> tuple[str, ...]:
        """The :attr:`labels` of the step just taken."""
        return ()

    def after_step(self) -> None:
        """After every step, e.g. an evaluation every ``eval_every`` steps."""

    def on_checkpoint(self) -> None:
        """On the main process, after each checkpoint (e.g. redraw a plot)."""

    def destination(self) -> Path:
        """Where :meth:`export` writes, and what :meth:`run` returns."""
        return self.output_dir / "model"

    def export(self, destination: Path) -> None:
        """On the main process, at the end: write what the run made to ``destination``."""
        raise NotImplementedError

    def run(self) -> Path:
        """Set up, train until ``max_steps`` or the time limit, export; return :meth:`destination`."""
        self.setup()
        accelerator, config = self.accelerator, self.config
        clock = StepClock(config.time_limit_minutes)
        window: dict[str, list[float]] = {name: [] for name in self.figures}
        while self.step < config.max_steps:
            figures = self.train_step()
            self.step += 1
            clock.step()
            for name in self.figures:
                if figures.get(name) is not None:  # a figure some steps lack (a GAN's) is averaged where present
                    window[name].append(float(figures[name]))
            if self.step % config.log_every == 0 or self.step == config.max_steps:
                self._log({name: sum(v) / len(v) if v else None for name, v in window.items()}, clock)
                window = {name: [] for name in self.figures}
            self.after_step()
            saved, stop = checkpoint_when_due(accelerator, config, self.output_dir, self.step, clock)
            if saved and accelerator.is_main_process:
                self.on_checkpoint()
            if stop:
                break
        destination = self.destination()
        if accelerator.is_main_process:
            self.export(destination)
        accelerator.wait_for_everyone()
        accelerator.end_training()
        return destination

    def _log(self, means: dict[str, float | None], clock: StepClock) -> None:
        lr = self.scheduler.get_last_lr()[0] if self.scheduler is not None else float("nan")
        seconds = clock.seconds_per_step()
        shown = " ".join(f"{name} {value:.4f}" for name, value in means.items() if value is not None)
        rate = f" lr {lr:.2e}" if self.log_lr else ""
        labels = self.label_values()
        tags = "".join(f" [{label}]" for label in labels)
        self.accelerator.print(f"step {self.step}{tags} {shown}{rate} {seconds:.2f} s/step", flush=True)
        if self.log_csv and self.accelerator.is_main_process:
            cells = [*labels, *("" if value is None else f"{value:.6f}" for value in means.values())]
            cells += [f"{lr:.3e}"] if self.log_lr else []
            with self.csv_path.open("a") as handle:
                handle.write(",".join((str(self.step), *cells, f"{seconds:.3f}")) + "\n")


__all__ = ["Recipe"]
