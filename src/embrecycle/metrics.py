"""Task metrics: accuracy and macro-F1 for classification, entity-level P/R/F1 for NER (conlleval rules)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from .data.conll import entity_spans

__all__ = ["classification_metrics", "entity_metrics"]


def classification_metrics(gold: Sequence[str], pred: Sequence[str], labels: Sequence[str]) -> dict[str, float]:
    """Accuracy and macro-F1 over ``labels`` (a label absent from gold and pred scores F1 0, like scikit-learn)."""
    n = len(gold)
    correct = sum(g == p for g, p in zip(gold, pred, strict=True))
    f1s = []
    for label in labels:
        tp = sum(g == label and p == label for g, p in zip(gold, pred, strict=True))
        fp = sum(g != label and p == label for g, p in zip(gold, pred, strict=True))
        fn = sum(g == label and p != label for g, p in zip(gold, pred, strict=True))
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return {"accuracy": correct / n if n else 0.0, "macro_f1": sum(f1s) / len(f1s) if f1s else 0.0}


def entity_metrics(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> dict[str, float]:
    """Micro precision, recall and F1 over exact entity spans (type and boundaries), as seqeval's default."""
    gold_spans: Counter[tuple] = Counter()
    pred_spans: Counter[tuple] = Counter()
    for i, (g, p) in enumerate(zip(gold, pred, strict=True)):
        gold_spans.update((i, *s) for s in entity_spans(g))
        pred_spans.update((i, *s) for s in entity_spans(p))
    tp = sum((gold_spans & pred_spans).values())
    n_pred, n_gold = sum(pred_spans.values()), sum(gold_spans.values())
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}
