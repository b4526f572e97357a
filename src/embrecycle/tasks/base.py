"""The interface every task implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from ..data.readers import Example
from ..errors import InputDataError
from ..families import Family
from ..tokenization import Encoded


class Task(ABC):
    """A task: labels, targets per token or document, logits from the last hidden states, decoding, metrics.

    Args:
        labels: The label vocabulary (classes, or IOB2 tags for NER), in id order.
    """

    name: ClassVar[str]
    auto_class: ClassVar[Any]  # the transformers AutoModelFor* class whose head this task trains
    primary_metric: ClassVar[str]

    def __init__(self, labels: Sequence[str]) -> None:
        self.labels = list(labels)
        self.label2id = {label: i for i, label in enumerate(self.labels)}

    @classmethod
    @abstractmethod
    def label_vocabulary(cls, examples: Sequence[Example]) -> list[str]:
        """Labels seen in the training examples, in a stable order."""

    @abstractmethod
    def check_labels(self, examples: Sequence[Example], split: str) -> None:
        """Raise InputDataError naming every label of ``examples`` outside the vocabulary."""

    @classmethod
    @abstractmethod
    def check_input(cls, examples: Sequence[Example], path: object) -> None:
        """Raise InputDataError naming ``path``, the task and the format it needs when the examples are of
        the wrong kind (texts for a task on words, or word lists for a task on texts)."""

    @abstractmethod
    def target(self, example: Example, encoded: Encoded) -> torch.Tensor:
        """What the loss compares logits with: a class id, or one id per token (-100 = ignored)."""

    @abstractmethod
    def collate(self, targets: Sequence[torch.Tensor], seq_len: int) -> torch.Tensor:
        """Stack targets of one batch (padding token targets with -100)."""

    @abstractmethod
    def logits(self, family: Family, task_model: nn.Module, sequence_output: torch.Tensor) -> torch.Tensor:
        """Logits from the encoder's last hidden states ``(batch, seq, hidden)``."""

    def reject_unknown(self, unknown: dict[str, str], split: str, what: str, hint: str = "") -> None:
        """Raise InputDataError naming up to five unknown ``{label: source}`` and the known ones."""
        if unknown:
            first = ", ".join(f"{k!r} (at {v})" for k, v in list(unknown.items())[:5])
            raise InputDataError(
                f"the {split} data has {what}s the model was not trained on: {first}. "
                f"Known {what}s: {self.labels}.{hint}"
            )

    @staticmethod
    def no_label_why(example: Example) -> str:
        """The end of a "has no label" message: why (the field looked for, the fields there are) and the fix."""
        why = f": {example.missing_label}" if example.missing_label else ""
        return f"{why}. Give every example a label, or pass --label-field NAME if the labels are in another field."

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)

    @abstractmethod
    def decode(self, logits: torch.Tensor, encoded: Encoded, doc: Any) -> dict[str, Any]:
        """One document's prediction (``logits`` are that document's, unpadded)."""

    @abstractmethod
    def gold(self, example: Example) -> Any:
        """The gold annotation in the form :meth:`metrics` expects."""

    @abstractmethod
    def predicted(self, prediction: dict[str, Any]) -> Any:
        """The predicted annotation in the form :meth:`metrics` expects."""

    @abstractmethod
    def metrics(self, gold: Sequence[Any], predicted: Sequence[Any]) -> dict[str, float]:
        """Scores; must include :attr:`primary_metric`."""

    @abstractmethod
    def constant_predictions(self, train: Sequence[Example], dev: Sequence[Example]) -> list[Any]:
        """What a model that ignores its input predicts for each of ``dev`` (in the form :meth:`metrics` expects):
        the most frequent training label, or ``O`` for every word."""

    def labels_of(self, annotation: Any) -> list[str]:
        """The labels in one document's annotation (gold or predicted): one label, or one tag per word."""
        return [str(annotation)] if isinstance(annotation, str) else [str(t) for t in annotation]

    def label_counts(self, examples: Sequence[Example]) -> dict[str, int]:
        """How often each label occurs in ``examples`` (NER: each tag over the words), in label order."""
        counts = dict.fromkeys(self.labels, 0)
        for e in examples:
            for label in self.labels_of(self.gold(e)):
                counts[label] = counts.get(label, 0) + 1
        return counts
