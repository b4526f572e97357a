"""Did a run learn anything? Its best dev score against what a model that ignores its input scores.

Two such models set the bar, and the higher of the two counts:

- the *constant* one predicts the most frequent training label for every document (NER: ``O`` for every
  word, entity F1 0);
- the *shuffled* one predicts what the run predicted, handed to the wrong documents: the run's best dev
  predictions permuted among the dev documents (NER: its tags permuted among all dev words). It keeps the
  run's label distribution and breaks any link to the input; the bar is the 95th percentile of its score
  over :data:`PERMUTATIONS` permutations (a one-sided permutation test at the 5% level).

A classifier that outputs a few labels at random beats the constant model (macro-F1 rewards spreading
the predictions) but not the shuffled one; a tagger that tags every word ``O`` scores 0 and beats neither.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..data.readers import Example
from ..tasks.base import Task

__all__ = ["PERMUTATIONS", "Chance", "chance_level"]

PERMUTATIONS = 100
"""Permutations of the shuffled model."""


@dataclass(frozen=True)
class Chance:
    """The bar a run's best dev score must clear."""

    constant: float
    """The primary metric of the constant prediction."""
    shuffled: float
    """The 95th percentile of the primary metric of the run's predictions shuffled among the documents."""

    @property
    def score(self) -> float:
        return max(self.constant, self.shuffled)

    def beaten_by(self, best: float) -> bool:
        """The best dev score is above chance (strictly: equal is no better)."""
        return best > self.score + 1e-9


def chance_level(
    task: Task, train: Sequence[Example], dev: Sequence[Example], predicted: Sequence[Any], seed: int = 0
) -> Chance:
    """The :class:`Chance` of ``task`` on ``dev`` (``predicted``: the run's best dev predictions)."""
    gold = [task.gold(e) for e in dev]
    metric = task.primary_metric
    constant = float(task.metrics(gold, task.constant_predictions(train, dev))[metric])
    if not predicted:
        return Chance(constant, constant)
    rng = np.random.default_rng(seed)
    scores = [float(task.metrics(gold, _shuffled(list(predicted), rng))[metric]) for _ in range(PERMUTATIONS)]
    return Chance(constant, float(np.quantile(scores, 0.95)))


def _shuffled(predicted: list[Any], rng: np.random.Generator) -> list[Any]:
    if predicted and isinstance(predicted[0], list):  # tag sequences: permute the tags among all words
        flat = [t for tags in predicted for t in tags]
        order = rng.permutation(len(flat))
        out, at = [], 0
        for tags in predicted:
            out.append([flat[i] for i in order[at : at + len(tags)]])
            at += len(tags)
        return out
    return [predicted[i] for i in rng.permutation(len(predicted))]
