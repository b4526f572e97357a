"""Dev-set evaluation during training."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from ..data.readers import Example
from ..hardware import Hardware
from ..inference import document_logits
from ..model import RecyclingModel
from ..tasks.base import Task
from .inputs import TrainingInputs

__all__ = ["Evaluator"]


class Evaluator:
    """Scores the model on the dev set; keeps the last evaluation's predictions and the time spent."""

    def __init__(
        self, model: RecyclingModel, task: Task, examples: Sequence[Example], inputs: TrainingInputs, pad_id: int,
        batch_size: int, hardware: Hardware,
    ) -> None:  # fmt: skip
        self.model, self.task, self.examples, self.inputs, self.hardware = model, task, examples, inputs, hardware
        self.pad_id, self.batch_size = pad_id, batch_size
        self.gold = [task.gold(e) for e in examples]
        self.predictions: list[Any] = []
        self.seconds = 0.0

    def __call__(self) -> dict[str, float]:
        t0 = time.perf_counter()
        inputs = self.inputs
        logits = document_logits(
            self.model, inputs.dev, inputs.cache, inputs.dev_index, self.pad_id, self.batch_size * 2, self.hardware,
            inputs.source_dev,
        )  # fmt: skip
        self.predictions = [
            self.task.predicted(self.task.decode(lg, enc, ex.doc))
            for lg, enc, ex in zip(logits, inputs.dev, self.examples, strict=True)
        ]
        self.model.train()
        self.seconds += time.perf_counter() - t0
        return self.task.metrics(self.gold, self.predictions)
