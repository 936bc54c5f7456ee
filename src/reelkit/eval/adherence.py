"""Prompt adherence and FVD-demo, read by the judge (:class:`~reelkit.models.judge.WorldJudge`).

*Adherence* compares what the judge sees in a clip with what its prompt asks for, attribute by attribute:
the prompt's objects are matched to the judge's objects (the pairing that agrees most, so the two objects
may swap places), and ``adherence_shape`` is the fraction of prompted objects whose shape the judge reads
as asked (likewise colour and motion; a prompted object the judge does not see counts as wrong).
*FVD-demo* is the Frechet distance between judge features of two sets of clips (generated vs real
held-out), the judge standing in for I3D.

>>> import torch
>>> from reelkit.eval.adherence import frechet_distance, prompt_adherence
>>> seen = [{"shape": "circle", "color": "red", "motion": "right"}]
>>> prompt_adherence("a red ball slides to the right", seen)
{'shape': 1.0, 'color': 1.0, 'motion': 1.0, 'count': 1.0}
>>> prompt_adherence("a red ball slides right and a blue block rests", seen)   # the block is missing
{'shape': 0.5, 'color': 0.5, 'motion': 0.5, 'count': 0.0}
>>> a = torch.randn(200, 8)
>>> round(frechet_distance(a, a), 6)
0.0
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence

import numpy as np
import torch

from reelkit.data.captions import parse_prompt
from reelkit.models.judge import ATTRIBUTES, WorldJudge

Objects = list[dict[str, str]]


@torch.no_grad()
def judge_clips(judge: WorldJudge, videos: torch.Tensor, batch_size: int = 16) -> tuple[list[Objects], torch.Tensor]:
    """Read ``(B, C, T, H, W)`` clips: per clip the list of objects the judge sees, and features ``(B, D)``."""
    seen, features = [], []
    for start in range(0, len(videos), batch_size):
        out = judge(videos[start:start + batch_size].to(judge.device))
        counts = out.num_objects.argmax(-1) + 1
        indices = {name: getattr(out, name).argmax(-1) for name in ATTRIBUTES}
        for i, count in enumerate(counts.tolist()):
            seen.append([{name: ATTRIBUTES[name][indices[name][i, slot]] for name in ATTRIBUTES}
                         for slot in range(count)])
        features.append(out.features.float().cpu())
    return seen, torch.cat(features)


def prompt_adherence(prompt: str, seen: Objects) -> dict[str, float]:
    """Per attribute, the fraction of the prompt's objects the judge reads as asked (see the module doc).

    Attributes the prompt leaves open are not scored. ``count`` is 1 when the judge sees as many objects as
    the prompt names.
    """
    wanted = parse_prompt(prompt).objects
    best, best_score = None, -1
    slots = list(range(len(seen)))
    for pairing in itertools.permutations(slots + [None] * len(wanted), len(wanted)):
        agree = {name: [] for name in ATTRIBUTES}
        for want, slot in zip(wanted, pairing, strict=True):
            for name in ATTRIBUTES:
                asked = getattr(want, name)
                if asked is not None:
                    agree[name].append(slot is not None and seen[slot][name] == asked)
        score = sum(sum(v) for v in agree.values())
        if score > best_score:
            best, best_score = agree, score
    result = {name: float(np.mean(v)) if v else float("nan") for name, v in best.items()}
    result["count"] = float(len(seen) == len(wanted))
    return result


def mean_adherence(scores: Iterable[dict[str, float]]) -> dict[str, float]:
    """Average per-clip adherence dicts, ignoring attributes a prompt left open (NaN)."""
    scores = list(scores)
    return {key: float(np.nanmean([s[key] for s in scores])) for key in scores[0]}


def label_accuracy(seen: Sequence[Objects], labels: Sequence[Objects]) -> dict[str, float]:
    """Judge accuracy against ground-truth object labels (layout order), per attribute and for the count."""
    hits = {name: [] for name in ATTRIBUTES}
    count = []
    for predicted, truth in zip(seen, labels, strict=True):
        count.append(len(predicted) == len(truth))
        for slot, obj in enumerate(truth):
            for name in ATTRIBUTES:
                hits[name].append(slot < len(predicted) and predicted[slot][name] == obj[name])
    return {**{name: float(np.mean(v)) for name, v in hits.items()}, "count": float(np.mean(count))}


def frechet_distance(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """Frechet distance between Gaussians fitted to two feature sets ``(N, D)`` (the FID/FVD formula)."""
    from scipy import linalg

    a = features_a.double().numpy()
    b = features_b.double().numpy()
    mu_a, mu_b = a.mean(0), b.mean(0)
    sigma_a, sigma_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(sigma_a @ sigma_b)
    if not np.isfinite(covmean).all():  # near-singular covariances: regularise (as pytorch-fid does)
        offset = np.eye(len(sigma_a)) * 1e-6
        covmean = linalg.sqrtm((sigma_a + offset) @ (sigma_b + offset))
    distance = ((mu_a - mu_b) ** 2).sum() + np.trace(sigma_a) + np.trace(sigma_b) - 2 * np.trace(covmean.real)
    return float(max(distance, 0.0))


__all__ = ["frechet_distance", "judge_clips", "label_accuracy", "mean_adherence", "prompt_adherence"]
