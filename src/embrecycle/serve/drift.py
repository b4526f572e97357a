"""A drift signal per task: the labels it predicted lately against the labels it was trained on.

Each served task keeps its last ``window`` predicted labels (NER: one tag per word) and compares their
distribution with the training data's (``label_counts`` in the run record) by the Jensen-Shannon divergence in
bits: 0 when the two agree, 1 when they share no label. A model whose inputs drift away from its training
data usually predicts a shifted mix of labels long before anyone has new gold labels to score it with.
"""

from __future__ import annotations

import math
import threading
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["DriftMonitor", "js_divergence"]


def js_divergence(p: Mapping[str, float], q: Mapping[str, float]) -> float:
    """Jensen-Shannon divergence of two label distributions (normalised here), in bits, in [0, 1]."""
    labels = set(p) | set(q)
    sp, sq = sum(p.values()), sum(q.values())
    if sp <= 0 or sq <= 0:
        raise ValueError("both distributions need some mass")
    total = 0.0
    for label in labels:
        a, b = p.get(label, 0.0) / sp, q.get(label, 0.0) / sq
        m = (a + b) / 2
        if a > 0:
            total += a * math.log2(a / m) / 2
        if b > 0:
            total += b * math.log2(b / m) / 2
    return min(max(total, 0.0), 1.0)


class DriftMonitor:
    """The sliding window of one task's predicted labels and its divergence from the training labels."""

    def __init__(self, training_counts: Mapping[str, int], window: int) -> None:
        self.training = {k: int(v) for k, v in training_counts.items() if v > 0}
        self.window: deque[str] = deque(maxlen=window)
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def observe(self, labels: Iterable[str]) -> None:
        with self._lock:
            for label in labels:
                if len(self.window) == self.window.maxlen:
                    old = self.window[0]
                    self.counts[old] -= 1
                    if not self.counts[old]:
                        del self.counts[old]
                self.window.append(label)
                self.counts[label] += 1

    def divergence(self) -> float | None:
        """The current divergence; None before any prediction or for a run without training label counts."""
        with self._lock:
            if not self.counts or not self.training:
                return None
            return js_divergence(dict(self.counts), dict(self.training))

    def predicted_shares(self) -> dict[str, float]:
        with self._lock:
            n = sum(self.counts.values())
            return {k: v / n for k, v in sorted(self.counts.items())} if n else {}

    def summary(self) -> dict[str, Any]:
        """What ``GET /v1/tasks`` shows: the window, both distributions and their divergence."""
        total = sum(self.training.values())
        return {
            "window": self.window.maxlen,
            "observed": len(self.window),
            "js_divergence_bits": self.divergence(),
            "predicted": self.predicted_shares(),
            "training": {k: v / total for k, v in sorted(self.training.items())} if total else None,
        }
