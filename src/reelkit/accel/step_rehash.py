"""Step Rehash: reuse the deep features of key steps on the other steps (Zhan, Wu et al. 2024, Streamlined
Inference, arXiv 2411.01171, Sec. 4.3).

The output features of a video model's temporal layers change little from one denoising step to the next.
Step Rehash splits the steps into two kinds:

* **key steps** run the whole model and store one deep feature per guidance branch;
* **rehash steps** skip the deep part of the model, inject the stored feature and recompute only the
  shallow path (with its skip connections) up to the output.

Which steps are keys is decided offline (the paper's Algorithm 1): on a calibration run every step is
computed and the chosen temporal layer's output is recorded; step 0 is a key, and walking forward a new key
starts whenever the cosine similarity between the current step's feature and the last key's drops below a
threshold, which is bisected until the budget of ``K`` full steps is met exactly (``search="greedy"``).
That placement crowds keys at both ends, so by default the search instead places the keys to maximise the
summed similarity of every step to its key (dynamic programming, ``search="optimal"``), with the similarity
read as one minus the relative distance between the features (``metric="distance"``; the cosine,
``"cosine"``, ignores changes of magnitude). On the reelkit teacher (``reelkit bench rehash``, 15 full steps
of 50) this gains about 4 dB over both the greedy search and evenly spaced keys.
:class:`RehashSchedule` keeps the calibration's normalised Gram matrix of the features, so key steps can be
derived for any ``K`` and metric and, by interpolating over normalised time, for another step count.
``uniform_key_steps`` gives the DeepCache-style baseline (evenly spaced keys, same mechanism).

Where the deep part is:

* **DiT** (reelkit's ``VideoDiT``, or any model whose ``transformer_blocks`` return only the token stream):
  the first and last ``shallow_blocks`` blocks are shallow, the blocks in between deep. A key step stores the
  deep part's residual (output of the last deep block minus input of the first); a rehash step adds it
  instead of running the deep blocks. The similarity is measured on the residual itself
  (``similarity_feature="deep"``, the default: on the teacher it places keys better) or on the last deep
  block's temporal attention output (``"temporal"``, the paper's choice).
* **U-Net** (diffusers' ``UNetSpatioTemporalConditionModel`` for SVD, ``UNetMotionModel`` for AnimateDiff):
  DeepCache-style, the outer ``shallow_blocks`` levels (``conv_in``, ``down_blocks[:s]``, ``up_blocks[-s:]``,
  the output head, the time embedding) always run; a rehash step injects the stored input of
  ``up_blocks[-s]`` (the output of ``up_blocks[-s-1]``, whose last layers are temporal) from the last key.

The key/rehash decision is a function of the step alone, so the guidance branches share it; each cache
context (``"cond"``, ``"uncond"``) keeps its own stored feature. Pipelines that enter no cache context
(diffusers' SVD and AnimateDiff pipelines batch both branches in one call) are followed by counting calls
and watching the timestep; set ``num_inference_steps`` for them. A new generation (step 0, or the timestep
turning back up) starts afresh, and with every step a key the model computes exactly as without the hooks.

>>> import torch
>>> from reelkit.models.dit import VideoDiT
>>> from reelkit.accel.step_rehash import (StepRehashConfig, apply_step_rehash, remove_step_rehash,
...                                       step_rehash_stats, uniform_key_steps)
>>> uniform_key_steps(10, 4)
[0, 3, 5, 8]
>>> model = VideoDiT(num_layers=4, num_attention_heads=2, attention_head_dim=16, text_dim=24).eval()
>>> apply_step_rehash(model, StepRehashConfig(num_full_steps=4))
>>> latents, text = torch.randn(1, 8, 5, 8, 8), torch.randn(1, 12, 24)
>>> for step, t in enumerate(torch.linspace(1000, 20, 10)):
...     with model.cache_context("cond", step_index=step, num_inference_steps=10):
...         velocity = model(latents, t, text).sample
>>> stats = step_rehash_stats(model)["cond"]
>>> stats.full_steps, len(stats.rehash_steps)
((0, 3, 5, 8), 6)
>>> remove_step_rehash(model)
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from reelkit.accel._diffusers_compat import (
    BaseState,
    CacheContext,
    ModelHook,
    StateManager,
    active_cache,
    claim_cache,
    current_context,
    get_hook,
    invalidate,
    register_hook,
    release_cache,
    remove_hooks,
    set_cache_context,
)
from reelkit.accel.adacache import _block_metadata, _ContextClock
from reelkit.errors import ReelkitError

_MODEL_HOOK = "step_rehash_model"
_DEEP_HOOK = "step_rehash_deep"
_PROBE_HOOK = "step_rehash_probe"
_OWN_HOOKS = (_MODEL_HOOK, _DEEP_HOOK, _PROBE_HOOK)
FALLBACK_CONTEXT = "step_rehash"  # used when the pipeline calls the model outside any cache_context
SCHEDULE_FORMAT = "reelkit-step-rehash"
MAX_PROBE_ELEMENTS = 1 << 16  # recorded features are strided down to this many values (cosine survives it)


class StepRehashError(ReelkitError, ValueError):
    """A bad Step Rehash configuration or schedule file, or a model Step Rehash cannot hook."""


# ------------------------------------------------------------------------------------------------ key steps


def uniform_key_steps(num_steps: int, budget: int) -> list[int]:
    """``budget`` evenly spaced key steps, each serving an equal share of the ``num_steps`` steps: DeepCache's
    uniform 1:N schedule where ``budget`` divides ``num_steps``, the nearest evenly spaced one elsewhere.

    >>> uniform_key_steps(50, 10) == list(range(0, 50, 5))
    True
    >>> uniform_key_steps(50, 15)
    [0, 3, 7, 10, 13, 17, 20, 23, 27, 30, 33, 37, 40, 43, 47]
    """
    _check_budget(budget, num_steps)
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
    _check_budget(budget, n)
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
    _check_budget(budget, n)
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


def _check_budget(budget: int, num_steps: int) -> None:
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
        _check_budget(budget, num_steps)
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


# ------------------------------------------------------------------------------------------------ config


@dataclass
class StepRehashConfig:
    """Which steps are key steps and where the model is split into shallow and deep parts.

    Attributes:
        key_steps: explicit key steps (step 0 is always added). Overrides the two below.
        num_full_steps: the budget ``K`` of full steps. With ``schedule``, the key steps come from its
            similarity profile (Algorithm 1); without, they are uniform (the DeepCache baseline).
        schedule: a :class:`RehashSchedule` (or the path of one) from :func:`calibrate_step_rehash`.
            With neither ``key_steps`` nor ``num_full_steps`` nor ``schedule``, every step is a key step:
            the model computes exactly as without Step Rehash (used to calibrate).
        num_inference_steps: step count for pipelines that do not pass it to ``cache_context``.
        shallow_blocks: DiT: blocks always computed at the start and at the end (an int for both, or a
            ``(front, back)`` pair); the blocks in between are deep. U-Net: outer levels always computed.
            ``None``: one level of a U-Net; ``max(1, L // 8)`` blocks at each end of an ``L``-block DiT,
            fewer at the end where that would leave no deep block.
        similarity_feature: what calibration records: ``"deep"`` (the stored deep feature, the quantity a
            rehash step reuses; the default) or ``"temporal"`` (the paper's choice: the last deep block's
            temporal attention output; U-Nets: the injected feature, whose last layers are temporal).
        metric: the similarity the search reads from the schedule: ``"distance"`` (one minus the relative
            distance between features; the default, it tracks the error a rehash step makes) or ``"cosine"``
            (the paper's).
        search: ``"optimal"`` (keys that maximise the summed similarity of each step to its key; the
            default) or ``"greedy"`` (the paper's Algorithm 1, a bisected threshold).
        compute_last: spend one of the budget on the last step (searched schedules).
    """

    key_steps: Sequence[int] | None = None
    num_full_steps: int | None = None
    schedule: RehashSchedule | str | Path | None = None
    num_inference_steps: int | None = None
    shallow_blocks: int | tuple[int, int] | None = None
    similarity_feature: Literal["temporal", "deep"] = "deep"
    metric: Literal["distance", "cosine"] = "distance"
    search: Literal["optimal", "greedy"] = "optimal"
    compute_last: bool = False

    def __post_init__(self):
        if self.schedule is not None and not isinstance(self.schedule, RehashSchedule):
            self.schedule = RehashSchedule.load(self.schedule)
        if self.key_steps is not None:
            steps = sorted({int(s) for s in self.key_steps} | {0})
            if steps[0] < 0:
                raise StepRehashError(f"key steps must be >= 0, got {list(self.key_steps)}")
            self.key_steps = tuple(steps)
        if self.num_full_steps is not None and (not isinstance(self.num_full_steps, int) or self.num_full_steps < 1):
            raise StepRehashError(f"num_full_steps must be a whole number >= 1, got {self.num_full_steps!r}")
        if self.num_inference_steps is not None:
            if self.num_inference_steps < 1:
                raise StepRehashError(f"num_inference_steps must be >= 1, got {self.num_inference_steps}")
            self.key_steps_for(self.num_inference_steps)  # validates the budget against the step count
        if isinstance(self.shallow_blocks, list):
            self.shallow_blocks = tuple(self.shallow_blocks)
        shallow = self.shallow_blocks if isinstance(self.shallow_blocks, tuple) else (self.shallow_blocks or 0,) * 2
        if len(shallow) != 2 or any(not isinstance(s, int) or s < 0 for s in shallow):
            raise StepRehashError(f"shallow_blocks is a count >= 0 or a (front, back) pair, got {self.shallow_blocks}")
        if self.similarity_feature not in ("temporal", "deep"):
            raise StepRehashError(f"similarity_feature must be 'temporal' or 'deep', got {self.similarity_feature!r}")
        if self.metric not in ("distance", "cosine"):
            raise StepRehashError(f"metric must be 'distance' or 'cosine', got {self.metric!r}")
        if self.search not in ("optimal", "greedy"):
            raise StepRehashError(f"search must be 'optimal' or 'greedy', got {self.search!r}")

    @property
    def every_step(self) -> bool:
        return self.key_steps is None and self.num_full_steps is None and self.schedule is None

    def key_steps_for(self, num_steps: int) -> list[int]:
        """The key steps of a generation of ``num_steps`` steps."""
        if self.key_steps is not None:
            if self.key_steps[-1] >= num_steps:
                raise StepRehashError(f"key step {self.key_steps[-1]} is beyond a {num_steps}-step generation")
            return list(self.key_steps)
        if self.schedule is not None:
            return self.schedule.key_steps_for(self.num_full_steps, num_steps, self.compute_last, self.metric,
                                               self.search)
        if self.num_full_steps is not None:
            return uniform_key_steps(num_steps, self.num_full_steps)
        return list(range(num_steps))


def config_from_options(num_full_steps: int | None, schedule: str | Path | None, num_inference_steps: int,
                        bundled: bool) -> StepRehashConfig | None:
    """The configuration ``reelkit generate --rehash K [--rehash-schedule FILE]`` asks for, or None.

    The bundled teacher uses its bundled profile; other models without a schedule get uniform key steps."""
    if num_full_steps is None and schedule is None:
        return None
    if num_full_steps is not None and not 1 <= num_full_steps <= num_inference_steps:
        raise StepRehashError(f"--rehash must be between 1 and the number of steps ({num_inference_steps}), got "
                              f"{num_full_steps}")
    if schedule is None and bundled and bundled_schedule_path().is_file():
        schedule = bundled_schedule_path()
    loaded = RehashSchedule.load(schedule) if schedule is not None else None
    settings = {}
    if loaded is not None:
        loaded.key_steps_for(num_full_steps, num_inference_steps, **settings)  # fails early if it cannot be mapped
        settings = {k: loaded.metadata[k] for k in ("compute_last", "metric", "search") if k in loaded.metadata}
        if "shallow_blocks" in loaded.metadata:
            value = loaded.metadata["shallow_blocks"]
            settings["shallow_blocks"] = tuple(value) if isinstance(value, list) else value
    return StepRehashConfig(num_full_steps=num_full_steps, schedule=loaded, num_inference_steps=num_inference_steps,
                            **settings)


# ------------------------------------------------------------------------------------------------ hooks


@dataclass
class StepRehashStats:
    """Full (key) and rehash steps of the last generation in one cache context."""

    full_steps: tuple[int, ...]
    rehash_steps: tuple[int, ...]

    @property
    def num_steps(self) -> int:
        return len(self.full_steps) + len(self.rehash_steps)


@dataclass
class _ContextState:
    step: int = -1
    feature: torch.Tensor | None = None  # the stored deep residual (DiT) or injected feature (U-Net)
    input_shape: tuple | None = None


@dataclass
class _Run:
    """What the model hook decided for the forward in flight; the part hooks read it."""

    state: _ContextState | None = None
    rehash: bool = False
    store: bool = True
    deep_input: torch.Tensor | None = None
    deep_feature: torch.Tensor | None = None
    probe: torch.Tensor | None = None


def _hidden(args, kwargs, name: str = "hidden_states") -> torch.Tensor:
    return kwargs[name] if name in kwargs else args[0]


class StepRehashModelHook(ModelHook):
    """Sits on the model's forward: finds the step and the cache context, decides key or rehash."""

    _is_stateful = True

    def __init__(self, config: StepRehashConfig, run: _Run, signature: inspect.Signature, hidden_argument: str):
        super().__init__()
        self.config, self.run, self.signature, self.hidden_argument = config, run, signature, hidden_argument
        self.state_manager = StateManager(BaseState)  # carries the pipeline's cache context
        self.trace: list | None = None
        self.stats: dict[str, dict[int, bool]] = {}  # kept across reset_state (pipelines reset at the end)
        self._keys: dict[int, frozenset[int]] = {}
        self.reset_state(None)

    def reset_state(self, module):
        self.states: dict[str, _ContextState] = {}
        self.clocks: dict[str, _ContextClock] = {}
        return module

    def key_steps(self, num_steps: int) -> frozenset[int]:
        if num_steps not in self._keys:
            self._keys[num_steps] = frozenset(self.config.key_steps_for(num_steps))
        return self._keys[num_steps]

    def new_forward(self, module: nn.Module, *args, **kwargs):
        context = current_context(self.state_manager)
        fallback = context is None
        if fallback:
            context = CacheContext(FALLBACK_CONTEXT)
            set_cache_context(module, context)
        run = self.run
        try:
            step, num_steps = self._begin(context, args, kwargs)
            output = self.fn_ref.original_forward(*args, **kwargs)
            if self.trace is not None and not run.rehash:
                feature = run.probe if run.probe is not None else run.deep_feature
                if feature is not None:
                    self.trace.append({"context": context.name, "step": step, "num_steps": num_steps,
                                       "feature": _summary(feature)})
            return output
        finally:
            run.state = run.deep_input = run.deep_feature = run.probe = None
            run.rehash = False
            if fallback:
                set_cache_context(module, None)

    def _begin(self, context: CacheContext, args, kwargs) -> tuple[int, int]:
        num_steps = context.num_inference_steps or self.config.num_inference_steps
        if not num_steps:
            raise StepRehashError("Step Rehash needs the number of inference steps: this pipeline does not pass it "
                                  "to cache_context, so set StepRehashConfig(num_inference_steps=...)")
        arguments = self.signature.bind_partial(*args, **kwargs).arguments
        hidden = arguments[self.hidden_argument]
        timestep = arguments.get("timestep")
        if isinstance(timestep, torch.Tensor):
            timestep = float(timestep.detach().float().max()) if timestep.numel() else None
        clock = self.clocks.setdefault(context.name, _ContextClock())
        step = clock.tick(context, None if timestep is None else float(timestep), num_steps)
        state = self.states.setdefault(context.name, _ContextState())
        if step <= state.step or step == 0:  # a new generation: forget the stored feature
            state.feature, state.input_shape = None, None
            self.stats.pop(context.name, None)
        state.step = step
        shape = tuple(hidden.shape)
        key = step in self.key_steps(num_steps) or state.feature is None or state.input_shape != shape
        self.run.state, self.run.rehash = state, not key
        self.run.store = step < num_steps - 1  # nothing reads a feature stored at the last step
        if key:
            state.input_shape = shape
        self.stats.setdefault(context.name, {})[step] = key
        return step, num_steps


def _summary(feature: torch.Tensor) -> torch.Tensor:
    flat = feature.detach().float().flatten()
    if flat.numel() > MAX_PROBE_ELEMENTS:
        flat = flat[:: -(-flat.numel() // MAX_PROBE_ELEMENTS)]
    return flat.cpu()


class _DiTDeepBlockHook(ModelHook):
    """A deep DiT block: runs on key steps (the first stores the deep input, the last the deep residual);
    on rehash steps passes the tokens through, and the last adds the stored residual."""

    def __init__(self, run: _Run, first: bool, last: bool, hidden_argument: str):
        super().__init__()
        self.run, self.first, self.last, self.hidden_argument = run, first, last, hidden_argument

    def new_forward(self, module: nn.Module, *args, **kwargs):
        run = self.run
        if run.state is None:  # called outside the hooked model's forward
            return self.fn_ref.original_forward(*args, **kwargs)
        hidden = _hidden(args, kwargs, self.hidden_argument)
        if run.rehash:
            return hidden + run.state.feature if self.last else hidden
        if self.first:
            run.deep_input = hidden
        output = self.fn_ref.original_forward(*args, **kwargs)
        if self.last:
            out = output if isinstance(output, torch.Tensor) else output[0]
            run.deep_feature = out - run.deep_input
            run.state.feature = run.deep_feature if run.store else None
        return output


class _UNetDeepHook(ModelHook):
    """A deep U-Net block. On rehash steps skipped blocks return placeholders of the right structure (their
    consumers are skipped too); the block feeding the first shallow up block returns the stored feature."""

    def __init__(self, run: _Run, kind: Literal["down", "mid", "up", "inject"], outputs: int = 0):
        super().__init__()
        self.run, self.kind, self.outputs = run, kind, outputs

    def new_forward(self, module: nn.Module, *args, **kwargs):
        run = self.run
        if run.state is None:
            return self.fn_ref.original_forward(*args, **kwargs)
        if not run.rehash:
            output = self.fn_ref.original_forward(*args, **kwargs)
            if self.kind == "inject":
                run.deep_feature = output
                run.state.feature = output if run.store else None
            return output
        if self.kind == "inject":
            return run.state.feature
        hidden = _hidden(args, kwargs)
        return (hidden, (hidden,) * self.outputs) if self.kind == "down" else hidden


class _ProbeHook(ModelHook):
    """Records the output of the layer whose similarity drives the key-step search (calibration only)."""

    def __init__(self, run: _Run, owner: StepRehashModelHook):
        super().__init__()
        self.run, self.owner = run, owner

    def post_forward(self, module, output):
        if self.owner.trace is not None and self.run.state is not None and not self.run.rehash:
            self.run.probe = output[0] if isinstance(output, tuple) else output
        return output


# ------------------------------------------------------------------------------------------------ apply


def _is_unet(model: nn.Module) -> bool:
    return all(isinstance(getattr(model, name, None), nn.Module) for name in ("down_blocks", "up_blocks", "mid_block"))


def _down_outputs(block: nn.Module) -> int:
    """How many skip tensors a down block returns: one per resnet, one per downsampler."""
    downsamplers = getattr(block, "downsamplers", None)
    return len(block.resnets) + (len(downsamplers) if downsamplers is not None else 0)


def _dit_shallow(shallow: int | tuple[int, int] | None, num_blocks: int) -> tuple[int, int]:
    if isinstance(shallow, tuple):
        return shallow
    if shallow is not None:
        return shallow, shallow
    front = back = max(1, num_blocks // 8)
    while front + back >= num_blocks and (front or back):
        back, front = (back - 1, front) if back else (back, front - 1)
    return front, back


def deep_part(model: nn.Module, config: StepRehashConfig | None = None) -> list[str]:
    """Qualified names of the modules a rehash step skips (the last one injects the stored feature)."""
    config = config or StepRehashConfig()
    if _is_unet(model):
        levels = config.shallow_blocks if not isinstance(config.shallow_blocks, tuple) else config.shallow_blocks[0]
        levels = 1 if levels is None else levels
        ups = len(model.up_blocks)
        if not 1 <= levels < ups:
            raise StepRehashError(f"shallow_blocks for a U-Net is the number of outer levels kept, 1 to {ups - 1}, "
                                  f"got {config.shallow_blocks}")
        return ([f"down_blocks.{i}" for i in range(levels, len(model.down_blocks))] + ["mid_block"]
                + [f"up_blocks.{i}" for i in range(ups - levels)])
    blocks = getattr(model, "transformer_blocks", None)
    if not isinstance(blocks, nn.ModuleList) or not len(blocks):
        raise StepRehashError(f"{type(model).__name__} is neither a DiT with transformer_blocks nor a U-Net with "
                              "down/mid/up blocks; Step Rehash cannot hook it")
    front, back = _dit_shallow(config.shallow_blocks, len(blocks))
    if front + back >= len(blocks):
        raise StepRehashError(f"shallow_blocks {config.shallow_blocks} leaves no deep block of {len(blocks)}")
    for block in blocks:
        metadata = _block_metadata(type(block))
        if metadata is None or metadata.return_encoder_hidden_states_index is not None:
            raise StepRehashError(f"{type(block).__name__} blocks are not supported: Step Rehash needs blocks "
                                  "registered with diffusers' TransformerBlockRegistry that return only the tokens")
    return [f"transformer_blocks.{i}" for i in range(front, len(blocks) - back)]


def apply_step_rehash(model: nn.Module, config: StepRehashConfig | None = None) -> None:
    """Hook Step Rehash into ``model`` (a reelkit ``VideoDiT``, diffusers' SVD or AnimateDiff U-Net), in place.

    Raises :class:`StepRehashError` if the model has no deep part to skip, or if another cache (AdaCache,
    diffusers' or cache-dit's, or Step Rehash itself) is applied.
    """
    config = config or StepRehashConfig()
    if hasattr(model, "_step_rehash_config"):
        raise StepRehashError(f"Step Rehash is already applied to this {type(model).__name__}; "
                              "remove_step_rehash first")
    other = active_cache(model, _OWN_HOOKS)
    if other is not None:
        raise StepRehashError(f"{type(model).__name__} already has a cache ({other}); remove it before applying "
                              "Step Rehash")
    deep = deep_part(model, config)
    modules = dict(model.named_modules())
    signature = inspect.signature(type(model).forward)
    signature = signature.replace(parameters=list(signature.parameters.values())[1:])  # drop self
    hidden_argument = "sample" if "sample" in signature.parameters else "hidden_states"
    if hidden_argument not in signature.parameters:
        raise StepRehashError(f"{type(model).__name__}.forward has no 'sample' or 'hidden_states' argument")
    run = _Run()
    model_hook = StepRehashModelHook(config, run, signature, hidden_argument)
    register_hook(model, model_hook, _MODEL_HOOK)
    if _is_unet(model):
        for index, name in enumerate(deep):
            block = modules[name]
            kind = "inject" if index == len(deep) - 1 else name.split("_")[0]
            register_hook(block, _UNetDeepHook(run, kind, _down_outputs(block) if kind == "down" else 0), _DEEP_HOOK)
    else:
        metadata_name = _block_metadata(type(modules[deep[0]])).hidden_states_argument_name
        for index, name in enumerate(deep):
            hook = _DiTDeepBlockHook(run, index == 0, index == len(deep) - 1, metadata_name)
            register_hook(modules[name], hook, _DEEP_HOOK)
        probe = getattr(modules[deep[-1]], "attn_temporal", None)
        if config.similarity_feature == "temporal" and isinstance(probe, nn.Module):
            register_hook(probe, _ProbeHook(run, model_hook), _PROBE_HOOK)
    claim_cache(model, "_step_rehash_config", config)
    invalidate(model)


def remove_step_rehash(model: nn.Module) -> None:
    """Remove Step Rehash's hooks and stored features; the model computes exactly as before."""
    remove_hooks(model, *_OWN_HOOKS)
    release_cache(model, "_step_rehash_config")


def _model_hook(model: nn.Module) -> StepRehashModelHook:
    hook = get_hook(model, _MODEL_HOOK)
    if hook is None:
        raise StepRehashError(f"Step Rehash is not applied to this {type(model).__name__}")
    return hook


def step_rehash_stats(model: nn.Module) -> dict[str, StepRehashStats]:
    """Full and rehash steps of the last (or current) generation, per cache context."""
    stats = {}
    for context, steps in _model_hook(model).stats.items():
        stats[context] = StepRehashStats(tuple(s for s in sorted(steps) if steps[s]),
                                         tuple(s for s in sorted(steps) if not steps[s]))
    return stats


def reset_step_rehash(model: nn.Module) -> None:
    """Forget the stored features and step counts (new generations also start afresh on their own)."""
    _model_hook(model)
    model._diffusers_hook.reset_stateful_hooks(recurse=True)


def format_stats(stats: dict[str, StepRehashStats]) -> str:
    """One line, e.g. ``step rehash: 15 full steps of 50 (key steps 0, 1, 2, 4, ...)``."""
    if not stats:
        return "step rehash: no generation yet"
    first = next(iter(stats.values()))
    return (f"step rehash: {len(first.full_steps)} full steps of {first.num_steps} "
            f"(key steps {', '.join(map(str, first.full_steps))})")


def record_rehash_features(model: nn.Module, enabled: bool = True) -> list[dict] | None:
    """Start (or stop) recording, at every key step, ``{"context", "step", "num_steps", "feature"}`` with
    the (flattened, CPU) feature the key-step search compares. Returns the list being filled."""
    hook = _model_hook(model)
    hook.trace = [] if enabled else None
    return hook.trace


def gram_from_trace(trace: Sequence[dict], num_steps: int) -> torch.Tensor:
    """The ``(num_steps, num_steps)`` Gram matrix of the recorded features, normalised by their mean squared
    norm, averaged over cache contexts and generations (a generation starts at step 0 of a context)."""
    runs: dict[tuple[str, int], dict[int, torch.Tensor]] = {}
    counters: dict[str, int] = {}
    for entry in trace:
        if entry["num_steps"] != num_steps:
            continue
        if entry["step"] == 0:
            counters[entry["context"]] = counters.get(entry["context"], 0) + 1
        runs.setdefault((entry["context"], counters.get(entry["context"], 0)), {})[entry["step"]] = entry["feature"]
    total, count = torch.zeros(num_steps, num_steps, dtype=torch.float64), 0
    for features in runs.values():
        if len(features) != num_steps:
            continue  # an interrupted or partly rehashed generation
        stacked = torch.stack([features[s] for s in range(num_steps)]).double()
        gram = stacked @ stacked.T
        total += gram / gram.diagonal().mean().clamp(min=1e-24)
        count += 1
    if not count:
        raise StepRehashError(f"no complete {num_steps}-step generation was recorded")
    return total / count


# ------------------------------------------------------------------------------------------------ calibrate


@dataclass
class RehashCalibration:
    """The calibration's schedule, the key steps for ``budget`` and how they fare against uniform keys."""

    schedule: RehashSchedule
    budget: int
    key_steps: list[int]
    uniform_key_steps: list[int]
    psnr_db: float | None = None
    uniform_psnr_db: float | None = None

    def save(self, path: str | Path, **metadata: Any) -> None:
        extra = {"budget": self.budget, "uniform_key_steps": self.uniform_key_steps}
        if self.psnr_db is not None:
            extra.update(psnr_db=round(self.psnr_db, 3), uniform_psnr_db=round(self.uniform_psnr_db, 3))
        self.schedule.save(path, **extra, **metadata)


def _denoiser(pipe) -> nn.Module:
    model = getattr(pipe, "transformer", None) or getattr(pipe, "unet", None)
    if model is None:
        raise StepRehashError(f"{type(pipe).__name__} has no transformer or unet to hook")
    return model


def calibrate_step_rehash(pipe, prompts: Sequence[str], budget: int, settings=None,
                          config: StepRehashConfig | None = None, evaluate: bool = True,
                          progress: Callable[[str], None] | None = None) -> RehashCalibration:
    """Record the deep-feature trajectory of full generations of ``prompts`` (every step a key step) and
    search the key steps for ``budget`` full steps. With ``evaluate``, also measure the mean PSNR of
    rehashed videos against the full ones, for the searched and for uniform key steps.

    >>> from reelkit.generation import GenerationSettings
    >>> from reelkit.pipelines.text_to_video import tiny_pipeline
    >>> result = calibrate_step_rehash(tiny_pipeline(open_gates=True), ["a red circle"], 3,
    ...                                GenerationSettings(steps=6, frames=5, size=32), evaluate=False)
    >>> len(result.key_steps), result.key_steps[0], tuple(result.schedule.gram.shape)
    (3, 0, (6, 6))
    """
    from reelkit.accel.calibrate import _generate
    from reelkit.generation import GenerationSettings
    from reelkit.metrics import video_psnr

    settings = settings or GenerationSettings()
    base = config or StepRehashConfig()
    say = progress or (lambda message: None)
    if not prompts:
        raise StepRehashError("calibration needs at least one prompt")
    n = settings.steps
    _check_budget(budget, n)
    model = _denoiser(pipe)
    plain = replace(base, key_steps=None, num_full_steps=None, schedule=None, num_inference_steps=None)
    say(f"full reference run on {len(prompts)} prompt(s), recording the deep features")
    apply_step_rehash(model, plain)
    references = []
    try:
        trace = record_rehash_features(model)
        for index, prompt in enumerate(prompts):
            references.append(_generate(pipe, prompt, settings, settings.seed + index))
        gram = gram_from_trace(trace, n)
    finally:
        remove_step_rehash(model)
    shallow = list(base.shallow_blocks) if isinstance(base.shallow_blocks, tuple) else base.shallow_blocks
    schedule = RehashSchedule(n, gram, None, {"feature": base.similarity_feature, "shallow_blocks": shallow,
                                              "metric": base.metric, "search": base.search,
                                              "compute_last": base.compute_last})
    keys = schedule.key_steps_for(budget, n, base.compute_last, base.metric, base.search)
    schedule.key_steps = tuple(keys)
    result = RehashCalibration(schedule, budget, keys, uniform_key_steps(n, budget))
    if evaluate:
        scores = []
        for name, steps in (("searched", keys), ("uniform", result.uniform_key_steps)):
            apply_step_rehash(model, replace(plain, key_steps=steps))
            try:
                psnr = [video_psnr(_generate(pipe, p, settings, settings.seed + i), r)
                        for i, (p, r) in enumerate(zip(prompts, references, strict=True))]
            finally:
                remove_step_rehash(model)
            scores.append(sum(min(v, 100.0) for v in psnr) / len(psnr))
            say(f"{name} key steps: {scores[-1]:.2f} dB")
        result.psnr_db, result.uniform_psnr_db = scores
    return result


__all__ = ["RehashCalibration", "RehashSchedule", "StepRehashConfig", "StepRehashError", "StepRehashStats",
           "apply_step_rehash", "bundled_schedule_path", "calibrate_step_rehash", "config_from_options", "deep_part",
           "format_stats", "greedy_key_steps", "record_rehash_features", "remove_step_rehash", "resample_similarity",
           "reset_step_rehash", "search_key_steps", "gram_from_trace",
           "optimal_key_steps", "similarity_matrix", "step_rehash_stats", "uniform_key_steps"]
