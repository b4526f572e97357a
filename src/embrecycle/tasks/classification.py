"""Sequence classification: one label per document; accuracy and macro-F1."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForSequenceClassification

from ..data.readers import Example
from ..errors import InputDataError
from ..families import Family
from ..metrics import classification_metrics
from ..tokenization import Encoded
from .base import Task


class ClassificationTask(Task):
    name = "classification"
    auto_class = AutoModelForSequenceClassification
    primary_metric = "macro_f1"

    @classmethod
    def check_input(cls, examples: Sequence[Example], path: object) -> None:
        words = next((e for e in examples if not isinstance(e.doc, str)), None)
        if words is not None:
            raise InputDataError(
                f"{path}: the classification task needs one text and one label per document (JSON lines, CSV/TSV "
                f"or plain text), but {words.source} is a CoNLL sentence (a word and a tag per line). Use --task "
                "ner to tag words, or give a file with a text field and a label field."
            )

    @classmethod
    def label_vocabulary(cls, examples: Sequence[Example]) -> list[str]:
        cls.check_input(examples, "the training data")
        missing = [e for e in examples if e.label is None]
        if missing:
            raise InputDataError(
                f"{len(missing)} training examples have no label, the first at {missing[0].source}"
                + cls.no_label_why(missing[0])
            )
        labels = sorted({str(e.label) for e in examples})
        if len(labels) < 2:
            raise InputDataError(f"classification needs at least 2 labels in the training data, found {labels}.")
        return labels

    def check_labels(self, examples: Sequence[Example], split: str) -> None:
        unknown: dict[str, str] = {}
        self.check_input(examples, f"the {split} data")
        for e in examples:
            if e.label is None:
                raise InputDataError(f"{e.source}: the {split} example has no label" + self.no_label_why(e))
            if e.label not in self.label2id:
                unknown.setdefault(str(e.label), e.source)
        self.reject_unknown(unknown, split, "label", " Fix the labels or add examples of them to the training data.")

    def target(self, example: Example, encoded: Encoded) -> torch.Tensor:
        return torch.tensor(self.label2id[str(example.label)])

    def collate(self, targets: Sequence[torch.Tensor], seq_len: int) -> torch.Tensor:
        return torch.stack(list(targets))

    def logits(self, family: Family, task_model: nn.Module, sequence_output: torch.Tensor) -> torch.Tensor:
        return family.sequence_logits(task_model, sequence_output)

    def decode(self, logits: torch.Tensor, encoded: Encoded, doc: Any) -> dict[str, Any]:
        probs = torch.softmax(logits.float(), -1).tolist()
        best = max(range(len(probs)), key=probs.__getitem__)
        return {"label": self.labels[best], "probabilities": dict(zip(self.labels, probs, strict=True))}

    def gold(self, example: Example) -> Any:
        return str(example.label)

    def predicted(self, prediction: dict[str, Any]) -> Any:
        return prediction["label"]

    def metrics(self, gold: Sequence[Any], predicted: Sequence[Any]) -> dict[str, float]:
        return classification_metrics(gold, predicted, self.labels)

    def constant_predictions(self, train: Sequence[Example], dev: Sequence[Example]) -> list[Any]:
        counts = Counter(str(e.label) for e in train)
        majority = max(self.labels, key=lambda label: counts[label])  # ties: the first in label order
        return [majority] * len(dev)
