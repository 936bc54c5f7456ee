"""AdaCache's settings: the codebook (change metric -> reuse length), its presets, and :class:`AdaCacheConfig`."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from reelkit.errors import ReelkitError


class AdaCacheError(ReelkitError, ValueError):
    """A bad AdaCache configuration, codebook file, or a model AdaCache cannot hook."""


@dataclass(frozen=True)
class Codebook:
    """Ascending metric thresholds and the reuse length (in steps) for a metric below each.

    The rate for a metric ``c`` is that of the first threshold with ``c < threshold``; above every
    threshold the last rate applies. Rates of 1 mean "compute every step".

    >>> book = Codebook.from_table({0.1: 6, 0.2: 3, 1.0: 1})
    >>> book.rates_for(torch.tensor([0.05, 0.15, 0.5, 3.0])).tolist()
    [6, 3, 1, 1]
    """

    thresholds: tuple[float, ...]
    rates: tuple[int, ...]

    def __post_init__(self):
        if not self.thresholds or len(self.thresholds) != len(self.rates):
            raise AdaCacheError("a codebook needs one reuse length per threshold and at least one entry")
        if any(b <= a for a, b in zip(self.thresholds, self.thresholds[1:], strict=False)):
            raise AdaCacheError(f"codebook thresholds must be strictly ascending, got {list(self.thresholds)}")
        if any(not isinstance(r, int) or r < 1 for r in self.rates):
            raise AdaCacheError(f"codebook reuse lengths must be whole numbers >= 1, got {list(self.rates)}")

    @classmethod
    def from_table(cls, table: Mapping[float, int] | Sequence[tuple[float, int]]) -> Codebook:
        try:
            items = sorted(((float(t), int(r)) for t, r in (table.items() if isinstance(table, Mapping) else table)))
        except (TypeError, ValueError) as error:
            raise AdaCacheError(f"a codebook maps thresholds to reuse lengths; could not read {table!r}") from error
        return cls(tuple(t for t, _ in items), tuple(r for _, r in items))

    @classmethod
    def load(cls, path: str | Path) -> Codebook:
        """Read a codebook written by :meth:`save` or ``reelkit calibrate adacache``."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
            return cls.from_table([(entry["threshold"], entry["rate"]) for entry in data["codebook"]])
        except FileNotFoundError as error:
            raise AdaCacheError(f"{path}: no such codebook file") from error
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as error:
            raise AdaCacheError(f"{path}: not a codebook file (expected JSON with a 'codebook' list of "
                                f"{{threshold, rate}})") from error

    def save(self, path: str | Path, **metadata: Any) -> None:
        entries = [{"threshold": t, "rate": r} for t, r in zip(self.thresholds, self.rates, strict=True)]
        from reelkit.files import write_json

        write_json(path, {"codebook": entries, **metadata})

    def scaled(self, factor: float) -> Codebook:
        """The same thresholds with reuse lengths multiplied by ``factor`` (e.g. to move a book to more steps)."""
        return Codebook(self.thresholds, tuple(max(1, round(r * factor)) for r in self.rates))

    def rates_for(self, metric: torch.Tensor) -> torch.Tensor:
        thresholds = torch.tensor(self.thresholds, dtype=metric.dtype, device=metric.device)
        index = torch.searchsorted(thresholds, metric.contiguous(), right=True).clamp(max=len(self.rates) - 1)
        return torch.tensor(self.rates, device=metric.device)[index]


# The official 30-step Open-Sora books (configs/sample_adacache.py); the thresholds are the same, only the
# reuse lengths differ. They are rescaled to the step count of each generation.
PRESETS: dict[str, tuple[dict[float, int], int]] = {
    "fast": ({0.08: 6, 0.16: 5, 0.24: 4, 0.32: 3, 0.40: 2, 1.00: 1}, 30),
    "slow": ({0.08: 3, 0.16: 2, 0.24: 1, 0.32: 1, 0.40: 1, 1.00: 1}, 30),
}


def preset_codebook(name: str, num_inference_steps: int) -> Codebook:
    """A named preset (``"fast"``, ``"slow"``) with its reuse lengths scaled to ``num_inference_steps``."""
    if name not in PRESETS:
        raise AdaCacheError(f"unknown AdaCache preset {name!r}; choose one of {', '.join(PRESETS)}")
    table, steps = PRESETS[name]
    return Codebook.from_table(table).scaled(num_inference_steps / steps)


@dataclass
class AdaCacheConfig:
    """What AdaCache monitors, how it maps change to reuse, and how schedules are shared.

    Attributes:
        codebook: threshold -> reuse-length table (a dict, a list of pairs, a :class:`Codebook`), or the
            name of a preset (``"fast"``, ``"slow"``) whose reuse lengths scale with the step count.
        monitor_blocks: qualified names of the block(s) whose residual drives the schedule (e.g.
            ``("transformer_blocks.4",)``); with several, their metrics are averaged. ``None``: the
            model's registered default, else the middle block.
        monitor_residual: ``"block"`` (the block's whole residual, the cached quantity) or the name of a
            submodule of the monitored block whose output is one residual branch (e.g. ``"attn_temporal"``,
            the paper's ``t-attn``). ``None``: the model's registered default.
        norm: ``"l1"`` (the paper's choice) or ``"l2"`` distance in the change metric.
        compute_first, compute_last: steps always computed at the start and at the end of the schedule.
        moreg: enable Motion Regularisation.
        moreg_centre, moreg_exponent, moreg_divisor: ``M_t = ((m / centre) ** exponent) / divisor``;
            ``M_t = 1`` at ``m = centre``. 0.385 is Open-Sora's typical motion; calibration re-centres it.
        moreg_gradient_gain: gain of the motion-gradient term ``|gain * (M_t - M_prev) / k|``.
        moreg_window: the part of the schedule (fractions of the steps) where MoReg is active.
        moreg_strides: frame strides of the motion score.
        cfg: ``"shared"`` (one schedule for the cond and uncond calls of a step, the official behaviour)
            or ``"per_branch"`` (each cache context keeps its own).
        per_sample: give each video of a batch its own schedule (the official code pools the batch). A
            block is skipped only when every video reuses it, and each video's output is the one it
            would get alone.
        num_inference_steps: step count for pipelines that do not pass it to ``cache_context``.
    """

    codebook: str | Codebook | Mapping[float, int] | Sequence[tuple[float, int]] = "fast"
    monitor_blocks: tuple[str, ...] | None = None
    monitor_residual: str | None = None
    norm: Literal["l1", "l2"] = "l1"
    compute_first: int = 2
    compute_last: int = 2
    moreg: bool = False
    moreg_centre: float = 0.385
    moreg_exponent: float = 8.0
    moreg_divisor: float = 1.0
    moreg_gradient_gain: float = 10.0
    moreg_window: tuple[float, float] = (0.1, 0.9)
    moreg_strides: tuple[int, ...] = (1,)
    cfg: Literal["shared", "per_branch"] = "shared"
    per_sample: bool = False
    num_inference_steps: int | None = None

    def __post_init__(self):
        if isinstance(self.codebook, str):
            preset_codebook(self.codebook, 30)  # validates the name
        elif not isinstance(self.codebook, Codebook):
            self.codebook = Codebook.from_table(self.codebook)
        if self.norm not in ("l1", "l2"):
            raise AdaCacheError(f"norm must be 'l1' or 'l2', got {self.norm!r}")
        if self.cfg not in ("shared", "per_branch"):
            raise AdaCacheError(f"cfg must be 'shared' or 'per_branch', got {self.cfg!r}")
        if self.compute_first < 1 or self.compute_last < 0:
            raise AdaCacheError("compute_first must be >= 1 and compute_last >= 0")
        low, high = self.moreg_window
        if not 0 <= low <= high <= 1:
            raise AdaCacheError(f"moreg_window is a pair of fractions 0 <= start <= end <= 1, got {self.moreg_window}")
        if self.moreg_centre <= 0 or self.moreg_divisor <= 0 or not self.moreg_strides:
            raise AdaCacheError("moreg_centre and moreg_divisor must be > 0 and moreg_strides non-empty")

    def codebook_for(self, num_inference_steps: int) -> Codebook:
        if isinstance(self.codebook, str):
            return preset_codebook(self.codebook, num_inference_steps)
        return self.codebook




__all__ = ["PRESETS", "AdaCacheConfig", "AdaCacheError", "Codebook", "preset_codebook"]
