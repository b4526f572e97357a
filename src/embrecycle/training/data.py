"""Step 1 of training: read the train and dev files as the task expects them."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..data.readers import Example, read_examples
from ..errors import InputDataError
from ..tasks import get_task
from ..tasks.base import Task
from ..tokenization import is_empty

if TYPE_CHECKING:
    from .config import TrainConfig

__all__ = ["TrainingData", "read_data", "read_split"]

log = logging.getLogger(__name__)


@dataclass
class TrainingData:
    """The task (with the training set's label vocabulary) and its training and dev examples."""

    task: Task
    train: list[Example]
    dev: list[Example]


def read_split(path: str, config: TrainConfig, task_name: str, limit: int | None, split: str) -> list[Example]:
    """The non-empty examples of a training or dev file, subsampled (seeded by ``config.seed``) to ``limit``."""
    examples = read_examples(path, config.data_format, text_field=config.text_field, label_field=config.label_field)
    kept = [e for e in examples if not is_empty(e.doc)]
    if len(kept) < len(examples):
        log.warning("%s: skipped %d empty documents", path, len(examples) - len(kept))
    if not kept:
        raise InputDataError(f"the {split} file {path} has no non-empty documents.")
    if task_name == "ner" and isinstance(kept[0].doc, str):
        raise InputDataError(f"{path}: NER needs CoNLL input (a token and a tag per line).")
    if limit is not None and len(kept) > limit:
        rng = random.Random(config.seed)
        kept = [kept[i] for i in sorted(rng.sample(range(len(kept)), limit))]
    return kept


def read_data(config: TrainConfig) -> TrainingData:
    """Train and dev examples; the label vocabulary comes from training, and unknown dev labels are an error."""
    task_cls = get_task(config.task)
    train = read_split(config.train, config, config.task, config.train_limit, "train")
    dev = read_split(config.dev, config, config.task, config.dev_limit, "dev")
    task = task_cls(task_cls.label_vocabulary(train))
    task.check_labels(dev, "dev")
    return TrainingData(task, train, dev)
