"""The statistics of a selection: chance level, retention intervals, stability, the monotone prediction, the pick."""

from __future__ import annotations

from typing import Any

import numpy as np

from .results import Candidate

__all__ = [
    "BOOTSTRAP_SAMPLES",
    "CHANCE_MARGIN",
    "INTERVAL",
    "MIN_TOLERANCE",
    "constant_score",
    "is_stable",
    "learned",
    "monotone_retention",
    "recommend",
    "retention_interval",
    "tolerance",
    "wide_intervals",
]

CHANCE_MARGIN = 0.01
"""A reference proxy must beat a constant prediction by this much for its ratios to mean anything."""

BOOTSTRAP_SAMPLES = 300
"""Resamples of the dev sample for the retention intervals."""

INTERVAL = 0.9
"""Coverage of the retention intervals (5th to 95th percentile of the bootstrap)."""

MIN_TOLERANCE = 0.01
"""Largest change of a cut's retention between the half-way and the final evaluation of the proxies for
the cut to count as stable, unless the target's margin (1 - target) is larger."""


def constant_score(task: Any, gold: list[Any]) -> float:
    """Best dev-sample score of always predicting one of the task's (training) labels (NER: no entity).

    The best, not the majority's: with macro-F1 over many classes, a model stuck on a label that is rarer in
    training than in the dev sample can outscore the majority prediction while having learned nothing.
    """
    if task.name != "classification":
        return 0.0  # predicting no entity scores 0 F1
    return max(float(task.metrics(gold, [label] * len(gold))[task.primary_metric]) for label in task.labels)


def learned(score: float, chance: float) -> bool:
    """Whether a reference score beats the constant prediction by :data:`CHANCE_MARGIN`."""
    return score > chance + CHANCE_MARGIN


def tolerance(target: float) -> float:
    """How far a cut's retention may move between the half-way and the final evaluation and count as stable."""
    return max(1 - target, MIN_TOLERANCE)


def is_stable(retention: float | None, half_retention: float | None, tol: float) -> bool:
    """Both retentions known and at most ``tol`` apart."""
    return retention is not None and half_retention is not None and abs(retention - half_retention) <= tol


def retention_interval(
    task: Any, gold: list[Any], reference: list[Any], cut: list[Any], seed: int, samples: int = BOOTSTRAP_SAMPLES
) -> list[float] | None:
    """90% paired-bootstrap interval of ``metric(cut) / metric(reference)`` over the dev documents.

    Each resample draws documents with replacement and scores both models' predictions on the same draw, so
    the interval shows how much the ratio depends on which dev documents were sampled. None when the
    predictions do not cover the dev sample or the reference scores 0 on most draws.
    """
    n = len(gold)
    if not n or len(reference) != n or len(cut) != n:
        return None
    metric = task.primary_metric
    rng = np.random.default_rng(seed)
    ratios = []
    for _ in range(samples):
        idx = rng.integers(0, n, n)
        g = [gold[i] for i in idx]
        ref = float(task.metrics(g, [reference[i] for i in idx])[metric])
        if ref > 0:
            ratios.append(float(task.metrics(g, [cut[i] for i in idx])[metric]) / ref)
    if len(ratios) < samples // 2:
        return None
    lo, hi = np.quantile(ratios, [(1 - INTERVAL) / 2, (1 + INTERVAL) / 2])
    return [float(lo), float(hi)]


def wide_intervals(candidates: list[Candidate], width: float) -> tuple[list[int], float]:
    """The cuts whose retention interval is wider than ``width``, and the widest of those (0 when none is)."""
    spans = {c.layer: c.retention_interval[1] - c.retention_interval[0] for c in candidates if c.retention_interval}
    wide = [k for k, span in spans.items() if span > width]
    return wide, max((spans[k] for k in wide), default=0.0)


def monotone_retention(candidates: list[Candidate]) -> None:
    """Set each measured cut's predicted retention: its proxy retention, made non-increasing in k (a later cut
    cannot be credited with more than an earlier one kept)."""
    floor = float("inf")
    for c in sorted(candidates, key=lambda c: c.layer):
        if c.measured_retention is not None:
            floor = min(floor, c.measured_retention)
            c.predicted_retention = floor


def recommend(candidates: list[Candidate], target: float) -> int | None:
    """Set the predicted retentions (:func:`monotone_retention`) and return the highest stable cut whose
    prediction meets ``target`` (None: none does, fine-tune fully)."""
    monotone_retention(candidates)
    trusted = [
        c.layer
        for c in candidates
        if c.stable and c.predicted_retention is not None and c.predicted_retention >= target
    ]
    return max(trusted) if trusted else None
