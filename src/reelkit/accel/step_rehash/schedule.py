"""Step Rehash's key steps: the searches over a step-similarity matrix (greedy, budgeted, optimal), and the
schedule file that carries them (:class:`RehashSchedule`)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from reelkit.errors import ReelkitError

SCHEDULE_FORMAT = "reelkit-step-rehash"


class StepRehashError(ReelkitError, ValueError):
    """A bad Step Rehash configuration, schedule file, or a model Step Rehash cannot hook."""




def uniform_key_steps(num_steps: int, budget: int) -> list[int]:
    """``budget`` evenly spaced key steps, each serving an equal share of the ``num_steps`` steps: DeepCache's
    uniform 1:N schedule where ``budget`` divides ``num_steps``, the nearest evenly spaced one elsewhere.

    >>> uniform_key_steps(50, 10) == list(range(0, 50, 5))
    True
    >>> uniform_key_steps(50, 15)
    [0, 3, 7, 10, 13, 17, 20, 23, 27, 30, 33, 37, 40, 43, 47]
    """
    check_budget(budget, num_steps)
    return [math.floor(i * num_steps / budget + 0.5) for i in range(budget)]


def greedy_key_steps(similarity: torch.Tensor, threshold: float) -> list[int]:
    """Algorithm 1 for one threshold: step 0 is a key, and a step becomes a key when its similarity to the
    last key falls below ``threshold``."""
    keys = [0]
    for step in range(1, similarity.shape[0]):
        if float(similarity[keys[-1], step]) < threshold:
            keys.append(step)
    return keys


def search_key_steps(similarity: torch.Tensor | Sequence[Sequence[float]], budget: int,
                     compute_last: bool = False, method: Literal["greedy", "optimal"] = "greedy") -> list[int]:
    """Exactly ``budget`` key steps from a step-to-step similarity matrix ``(n, n)``.

    ``"greedy"`` is the paper's Algorithm 1: the threshold of :func:`greedy_key_steps` is bisected until the
    budget is met; where no threshold gives it exactly (the count can jump), the keys of the largest count
    below it are topped up with the steps least similar to their key. ``"optimal"`` places the keys to
    maximise the summed similarity of every step to its key (:func:`optimal_key_steps`). ``compute_last``
    spends one of the budget on the last step.

    >>> sim = torch.tensor([[1.0, 0.5, 0.4, 0.3], [0.5, 1.0, 0.99, 0.98], [0.4, 0.99, 1.0, 0.99],
    ...                     [0.3, 0.98, 0.99, 1.0]])
    >>> search_key_steps(sim, 2), search_key_steps(sim, 2, method="optimal"), uniform_key_steps(4, 2)
    ([0, 1], [0, 1], [0, 2])
    """
    sim = torch.as_tensor(similarity, dtype=torch.float64)
    if sim.dim() != 2 or sim.shape[0] != sim.shape[1] or sim.shape[0] < 1:
        raise StepRehashError(f"a similarity matrix is square (steps x steps), got shape {tuple(sim.shape)}")
    if method not in ("greedy", "optimal"):
        raise StepRehashError(f"the key-step search is 'greedy' or 'optimal', got {method!r}")
    n = sim.shape[0]
    check_budget(budget, n)
    if budget >= n:
        return list(range(n))
    last = compute_last and budget >= 2
    m, b = (n - 1, budget - 1) if last else (n, budget)
    sub = sim[:m, :m]
    if method == "optimal":
        return optimal_key_steps(sub, b) + ([n - 1] if last else [])
    low, high = float(sub.min()) - 1.0, float(sub.max()) + 1.0  # one key at `low`, every step at `high`
    keys = greedy_key_steps(sub, low)
    for _ in range(64):
        middle = (low + high) / 2
        candidate = greedy_key_steps(sub, middle)
        if len(candidate) == b:
            keys = candidate
            break
        if len(candidate) < b:
            low, keys = middle, candidate
        else:
            high = middle
    while len(keys) < b:  # top up: the step least similar to its key
        worst = min((s for s in range(m) if s not in keys),
                    key=lambda s: float(sub[max(k for k in keys if k < s), s]))
        keys = sorted(keys + [worst])
    return sorted(keys[:b]) + ([n - 1] if last else [])


def optimal_key_steps(similarity: torch.Tensor, budget: int) -> list[int]:
    """The ``budget`` key steps (step 0 first) that minimise the summed dissimilarity ``1 - similarity`` of
    every rehash step to the key it reuses: dynamic programming over where each run of reused steps ends."""
    n = similarity.shape[0]
    check_budget(budget, n)
    cost = (1.0 - similarity.double()).triu(1).cumsum(1)  # cost[k, s - 1]: steps k+1..s-1 reuse key k
    segment = torch.full((n + 1, n + 1), math.inf, dtype=torch.float64)  # segment[k, s]: key k serves k..s-1
    for k in range(n):
        segment[k, k + 1:] = cost[k, k:]
        segment[k, k + 1] = 0.0
    best = torch.full((n + 1,), math.inf, dtype=torch.float64)
    best[0] = 0.0
    choices = []
    for _ in range(budget):
        total = best[:, None] + segment  # (last segment start k, end s)
        best, choice = total.min(0)
        choices.append(choice)
    keys, end = [], n
    for choice in reversed(choices):
        end = int(choice[end])
        keys.append(end)
    return sorted(keys)


def similarity_matrix(gram: torch.Tensor, metric: Literal["distance", "cosine"] = "distance") -> torch.Tensor:
    """Step-to-step similarity from a normalised Gram matrix of features (``G_ij = <f_i, f_j> / mean |f|^2``):
    ``"cosine"`` (the paper's), or ``"distance"``, one minus the distance between the two features relative to
    the features' RMS norm (it sees changes of magnitude that the cosine ignores)."""
    gram = gram.double()
    diagonal = gram.diagonal()
    if metric == "cosine":
        return gram / (diagonal[:, None] * diagonal[None, :]).sqrt().clamp(min=1e-12)
    if metric == "distance":
        return 1.0 - (diagonal[:, None] + diagonal[None, :] - 2 * gram).clamp(min=0).sqrt()
    raise StepRehashError(f"metric must be 'distance' or 'cosine', got {metric!r}")


def resample_similarity(similarity: torch.Tensor, num_steps: int) -> torch.Tensor:
    """A step-to-step matrix (similarity or Gram) over ``n`` steps read at ``num_steps`` steps of the same
    trajectory (bilinear over normalised time, first and last steps kept)."""
    n = similarity.shape[0]
    if n == num_steps:
        return similarity
    if n < 2 or num_steps < 2:
        raise StepRehashError(f"cannot map a {n}-step similarity profile to {num_steps} steps")
    return torch.nn.functional.interpolate(similarity[None, None].double(), size=(num_steps, num_steps),
                                           mode="bilinear", align_corners=True)[0, 0]


def check_budget(budget: int, num_steps: int) -> None:
    if not isinstance(budget, int) or not 1 <= budget <= num_steps:
        raise StepRehashError(f"the number of full steps must be between 1 and the number of steps "
                              f"({num_steps}), got {budget}")


# ------------------------------------------------------------------------------------------------ schedule


@dataclass
class RehashSchedule:
    """A calibration profile: the normalised Gram matrix of the recorded features of every pair of steps
    (``gram``, ``(n, n)``, ``G_ij = <f_i, f_j> / mean_t |f_t|^2``, averaged over prompts and guidance branches;
    cosine similarity and relative distance both derive from it) and/or fixed key steps for ``num_steps``
    steps.

    With ``gram``, key steps can be derived for any budget and step count (:meth:`key_steps_for`); with
    ``key_steps`` alone, only for ``num_steps`` steps and that budget.
    """

    num_steps: int
    gram: torch.Tensor | None = None
    key_steps: tuple[int, ...] | None = None
    metadata: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.gram is None and self.key_steps is None:
            raise StepRehashError("a rehash schedule needs a similarity profile (gram) or key steps")
        if self.gram is not None:
            self.gram = torch.as_tensor(self.gram, dtype=torch.float64)
            if tuple(self.gram.shape) != (self.num_steps, self.num_steps):
                raise StepRehashError(f"the similarity profile must be {self.num_steps} x {self.num_steps}, got "
                                      f"{tuple(self.gram.shape)}")
        if self.key_steps is not None:
            self.key_steps = tuple(sorted({int(s) for s in self.key_steps}))
            if not self.key_steps or self.key_steps[0] != 0 or self.key_steps[-1] >= self.num_steps:
                raise StepRehashError(f"key steps must include step 0 and lie below {self.num_steps}, got "
                                      f"{list(self.key_steps)}")

    def key_steps_for(self, budget: int | None, num_steps: int, compute_last: bool = False,
                      metric: Literal["distance", "cosine"] = "distance",
                      search: Literal["optimal", "greedy"] = "optimal") -> list[int]:
        """Key steps for a budget of ``budget`` full steps (``None``: the schedule's own) of ``num_steps``,
        searched on the ``metric`` similarity (see :func:`similarity_matrix`, :func:`search_key_steps`)."""
        if budget is None:
            if self.key_steps is None:
                raise StepRehashError("this rehash schedule holds no key steps; give the number of full steps")
            budget = len(self.key_steps)
        check_budget(budget, num_steps)
        if self.key_steps is not None and num_steps == self.num_steps and budget == len(self.key_steps):
            return list(self.key_steps)
        if self.gram is None:
            raise StepRehashError(f"this rehash schedule holds only key steps ({len(self.key_steps)} of "
                                  f"{self.num_steps} steps), no similarity profile, so it cannot be mapped to "
                                  f"{budget} full steps of {num_steps}")
        similarity = similarity_matrix(resample_similarity(self.gram, num_steps), metric)
        return search_key_steps(similarity, budget, compute_last, search)

    def to_json(self, **metadata: Any) -> dict:
        data = {"format": SCHEDULE_FORMAT, "version": 1, "steps": self.num_steps}
        if self.key_steps is not None:
            data["key_steps"] = list(self.key_steps)
        data.update({**self.metadata, **metadata})
        if self.gram is not None:
            data["gram"] = [[round(float(v), 5) for v in row] for row in self.gram]
        return data

    def save(self, path: str | Path, **metadata: Any) -> None:
        """Write JSON (the Gram matrix rows one per line, so the file stays readable and small)."""
        from reelkit.files import atomic_path, finite_or_null

        data = finite_or_null(self.to_json(**metadata))
        rows = data.pop("gram", None)
        text = json.dumps(data, indent=2, allow_nan=False)
        if rows is not None:
            body = ",\n".join("    " + json.dumps(row, separators=(",", ":")) for row in rows)
            text = text[:-2] + ',\n  "gram": [\n' + body + "\n  ]\n}"
        with atomic_path(path) as tmp:
            tmp.write_text(text + "\n")

    @classmethod
    def load(cls, path: str | Path) -> RehashSchedule:
        """Read a schedule written by :meth:`save` or ``reelkit calibrate rehash``."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict) or data.get("format", SCHEDULE_FORMAT) != SCHEDULE_FORMAT:
                raise TypeError
            metadata = {k: v for k, v in data.items() if k not in ("format", "version", "steps", "gram", "key_steps")}
            return cls(int(data["steps"]), data.get("gram"), data.get("key_steps"), metadata)
        except FileNotFoundError as error:
            raise StepRehashError(f"{path}: no such step rehash schedule file") from error
        except StepRehashError as error:
            raise StepRehashError(f"{path}: {error}") from error
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError,
                RuntimeError) as error:
            raise StepRehashError(f"{path}: not a step rehash schedule (expected JSON from 'reelkit calibrate "
                                  "rehash' with 'steps' and a 'gram' matrix or 'key_steps')") from error


def bundled_schedule_path() -> Path:
    """The calibration profile shipped with the bundled teacher."""
    from reelkit.paths import ASSETS_DIR

    return ASSETS_DIR / "teacher" / "step_rehash.json"


