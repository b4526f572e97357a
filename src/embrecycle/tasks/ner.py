"""Token classification (NER): IOB2 tags per word, first sub-token carries the label; entity-level F1."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForTokenClassification

from ..data.conll import entity_spans
from ..data.readers import Example
from ..errors import InputDataError
from ..families import Family
from ..metrics import entity_metrics
from ..tokenization import Encoded
from .base import Task


def words_of(doc: str | Sequence[str]) -> list[str]:
    """The words of a document: its word list, or its text split on whitespace."""
    return doc.split() if isinstance(doc, str) else list(doc)


class NerTask(Task):
    name = "ner"
    auto_class = AutoModelForTokenClassification
    primary_metric = "f1"

    @classmethod
    def check_input(cls, examples: Sequence[Example], path: object) -> None:
        text = next((e for e in examples if isinstance(e.doc, str)), None)
        if text is not None:
            label = f" with the label {text.label!r}" if text.label is not None else ""
            raise InputDataError(
                f"{path}: NER needs CoNLL input (--task ner: a word and its tag per line, a blank line between "
                f"sentences, e.g. a .conll file), but {text.source} is a text document{label}. Give a CoNLL "
                "file, or use --task classification for one label per document."
            )

    @classmethod
    def label_vocabulary(cls, examples: Sequence[Example]) -> list[str]:
        cls.check_input(examples, "the training data")
        types: set[str] = set()
        for e in examples:
            if not isinstance(e.label, list):
                raise InputDataError(
                    f"{e.source}: NER needs a tag per word, but this sentence has no tag column. Give a CoNLL "
                    "file with the tag as the last column (word<TAB>tag)."
                )
            types.update(t[2:] for t in e.label if t != "O")
        return ["O"] + [f"{p}-{t}" for t in sorted(types) for p in ("B", "I")]

    def check_labels(self, examples: Sequence[Example], split: str) -> None:
        self.check_input(examples, f"the {split} data")
        unknown: dict[str, str] = {}
        for e in examples:
            if not isinstance(e.label, list):
                raise InputDataError(
                    f"{e.source}: the {split} sentence has no tag column. Give a CoNLL file with the tag as the "
                    "last column (word<TAB>tag)."
                )
            for t in e.label:
                if t not in self.label2id:
                    unknown.setdefault(t, e.source)
        self.reject_unknown(unknown, split, "tag")

    def target(self, example: Example, encoded: Encoded) -> torch.Tensor:
        tags = example.label
        assert isinstance(tags, list)
        out = torch.full((len(encoded.word_ids),), -100, dtype=torch.long)
        prev = -1
        for j, w in enumerate(encoded.word_ids):
            if w >= 0 and w != prev:  # the first sub-token of each word carries the word's tag
                out[j] = self.label2id[tags[w]]
            prev = w
        return out

    def collate(self, targets: Sequence[torch.Tensor], seq_len: int) -> torch.Tensor:
        out = torch.full((len(targets), seq_len), -100, dtype=torch.long)
        for i, t in enumerate(targets):
            out[i, : len(t)] = t
        return out

    def logits(self, family: Family, task_model: nn.Module, sequence_output: torch.Tensor) -> torch.Tensor:
        return family.token_logits(task_model, sequence_output)

    def decode(self, logits: torch.Tensor, encoded: Encoded, doc: Any) -> dict[str, Any]:
        words = words_of(doc)
        tags = ["O"] * len(words)  # words cut off by max_length stay O
        ids = logits.argmax(-1).tolist()
        prev = -1
        for j, w in enumerate(encoded.word_ids):
            if w >= 0 and w != prev:
                tags[w] = self.labels[ids[j]]
            prev = w
        entities = [{"type": t, "start": s, "end": e, "text": " ".join(words[s:e])} for t, s, e in entity_spans(tags)]
        return {"words": words, "tags": tags, "entities": entities}

    def gold(self, example: Example) -> Any:
        return example.label

    def predicted(self, prediction: dict[str, Any]) -> Any:
        return prediction["tags"]

    def metrics(self, gold: Sequence[Any], predicted: Sequence[Any]) -> dict[str, float]:
        return entity_metrics(gold, predicted)

    def constant_predictions(self, train: Sequence[Example], dev: Sequence[Example]) -> list[Any]:
        return [["O"] * len(self.gold(e)) for e in dev]
