"""Step 1 of training: read the train and dev files as the task expects them."""

from __future__ import annotations

import logging
import random
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..data.overlap import find_overlap
from ..data.readers import Example, read_examples
from ..errors import InputDataError
from ..tasks import get_task
from ..tasks.base import Task
from ..tokenization import is_empty

if TYPE_CHECKING:
    from .config import TrainConfig

__all__ = ["TrainingData", "conflicting_labels", "read_data", "read_split"]

log = logging.getLogger(__name__)


@dataclass
class TrainingData:
    """The task (with the training set's label vocabulary) and its training and dev examples."""

    task: Task
    train: list[Example]
    dev: list[Example]


def read_split(path: str, config: TrainConfig, task_name: str, limit: int | None, split: str) -> list[Example]:
    """The non-empty examples of a training or dev file, subsampled (seeded by ``config.seed``) to ``limit``.

    Empty documents are skipped with a warning (they have no states to learn from); documents that appear
    twice with different labels are kept, with a warning naming the first such pair.

    Raises:
        InputDataError: the file is unreadable or malformed, has no non-empty document, or is of the wrong
            kind for the task (CoNLL for classification, texts for NER).
    """
    examples = read_examples(path, config.data_format, text_field=config.text_field, label_field=config.label_field)
    kept = [e for e in examples if not is_empty(e.doc)]
    if len(kept) < len(examples):
        first = next(e.source for e in examples if is_empty(e.doc))
        log.warning("%s: skipped %d empty documents (the first at %s)", path, len(examples) - len(kept), first)
    if not kept:
        raise InputDataError(f"the {split} file {path} has no non-empty documents.")
    get_task(task_name).check_input(kept, path)
    warn_conflicting_labels(kept, path)
    if limit is not None and len(kept) > limit:
        rng = random.Random(config.seed)
        kept = [kept[i] for i in sorted(rng.sample(range(len(kept)), limit))]
    return kept


def _key(value: str | Sequence[str] | None) -> Hashable:
    return value if value is None or isinstance(value, str) else tuple(value)


def conflicting_labels(examples: Sequence[Example]) -> list[tuple[Example, Example]]:
    """Pairs ``(first, other)`` of examples with the same document and different labels, one per document."""
    first: dict[Hashable, Example] = {}
    found: dict[Hashable, tuple[Example, Example]] = {}
    for e in examples:
        doc = _key(e.doc)
        seen = first.setdefault(doc, e)
        if _key(seen.label) != _key(e.label) and doc not in found:
            found[doc] = (seen, e)
    return list(found.values())


def warn_conflicting_labels(examples: Sequence[Example], path: str) -> None:
    """Log a warning when the same document has different labels (the model cannot fit both)."""
    pairs = conflicting_labels(examples)
    if pairs:
        a, b = pairs[0]
        log.warning(
            "%s: %d documents appear more than once with different labels, e.g. %s (%s) and %s (%s); "
            "fix the labels or drop the duplicates",
            path,
            len(pairs),
            a.source,
            _shown(a.label),
            b.source,
            _shown(b.label),
        )


def _shown(label: str | list[str] | None) -> str:
    text = repr(label)
    return text if len(text) <= 60 else text[:57] + "..."


def read_data(config: TrainConfig) -> TrainingData:
    """Train and dev examples; the label vocabulary comes from training, and unknown dev labels are an error."""
    task_cls = get_task(config.task)
    train = read_split(config.train, config, config.task, config.train_limit, "train")
    dev = read_split(config.dev, config, config.task, config.dev_limit, "dev")
    task = task_cls(task_cls.label_vocabulary(train))
    task.check_labels(dev, "dev")
    overlap = find_overlap(train, dev, shown=1)
    if overlap.any:
        log.warning(
            "%s; dev scores overstate what the model does on new documents. Remove them from --dev (or --train); "
            "`embrecycle cache overlap --train %s --test %s%s` lists them",
            overlap.summary("--train", "--dev").replace("\n", ";"),
            config.train,
            config.dev,
            (f" --text-field {config.text_field}" if config.text_field != "text" else "")
            + (f" --format {config.data_format}" if config.data_format else ""),
        )
    return TrainingData(task, train, dev)
