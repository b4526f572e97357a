"""Training settings, validated up front, saved next to every run."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..config import check_positive
from ..errors import ConfigError
from ..upper import UpperOptions

METHODS = ("recycle", "full-finetune")


@dataclass
class TrainConfig:
    """Everything that defines a training run.

    Attributes:
        task: ``classification`` or ``ner``.
        model: Base model name (hub id) or local directory.
        layer: Cut k: layers 1..k come from the cache, k+1..N are run.
        train: Training file. dev: Development file (evaluated during training).
        out: Run directory.
        cache: Cache directory; default derived from the settings under ``~/.cache/embrecycle/caches``.
        upper: What is trained above the cut: ``full`` (layers k+1..N + head), ``head``, ``lora`` or ``adapter``
            (see :mod:`embrecycle.upper`).
        upper_options: LoRA / adapter settings (:class:`~embrecycle.upper.UpperOptions`, or a dict of them).
        baseline: ``None`` (recycling) or ``full-finetune`` (the whole model from text, same loop).
        epochs, lr, batch_size, seed, warmup_ratio, weight_decay, max_grad_norm: the optimiser and schedule
            (AdamW, linear warmup then linear decay, gradient clipping).
        head_lr: Learning rate of the task head (classifier, and BERT's pooler); default: ``lr``. A freshly
            initialised head often wants a higher rate than pretrained layers.
        max_length: Max tokens per document (default: the model's, at most 512); truncation: as for caches.
        eval_every: Evaluate every N steps (default: at the end of each epoch).
        patience: Stop after this many evaluations without improvement (default: never).
        train_limit, dev_limit: Use a seeded random subset of at most this many examples.
        text_field, label_field, data_format: How to read JSON lines / CSV input.
        cache_dtype: Storage dtype of the cache.
        init_from: A run directory of the same base model and task (same labels) whose saved weights start
            this run's trainable weights, e.g. the upper layers and head of a full fine-tuning run; the
            weights this run keeps frozen (the layers below the cut) stay pretrained. Default: pretrained
            weights and a fresh head.
    """

    task: str
    model: str
    layer: int
    train: str
    dev: str
    out: str
    cache: str | None = None
    upper: str = "full"
    upper_options: UpperOptions | dict[str, Any] = field(default_factory=UpperOptions)
    baseline: str | None = None
    epochs: int = 3
    lr: float = 5e-5
    head_lr: float | None = None
    batch_size: int = 32
    seed: int = 42
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    max_length: int | None = None
    truncation: str = "truncate"
    eval_every: int | None = None
    patience: int | None = None
    train_limit: int | None = None
    dev_limit: int | None = None
    text_field: str = "text"
    label_field: str = "label"
    data_format: str | None = None
    cache_dtype: str = "float16"
    init_from: str | None = None

    def __post_init__(self) -> None:
        from ..tasks import TASKS
        from ..upper import UPPER_MODES

        if not isinstance(self.upper_options, UpperOptions):
            self.upper_options = UpperOptions.from_dict(self.upper_options)
        problems = []
        if self.task not in TASKS:
            problems.append(f"task={self.task!r} (choose one of {sorted(TASKS)})")
        if self.upper not in UPPER_MODES:
            problems.append(f"upper={self.upper!r} (choose one of {sorted(UPPER_MODES)})")
        if self.baseline not in (None, "full-finetune", "lora"):
            problems.append(f"baseline={self.baseline!r} (choose 'full-finetune', 'lora' or leave it unset)")
        if not 0 <= self.warmup_ratio < 1:
            problems.append(f"warmup_ratio={self.warmup_ratio} (must be in [0, 1))")
        if self.weight_decay < 0:
            problems.append(f"weight_decay={self.weight_decay} (must be >= 0)")
        if problems:
            raise ConfigError("invalid training settings: " + "; ".join(problems) + ".")
        check_positive(
            epochs=self.epochs,
            lr=self.lr,
            batch_size=self.batch_size,
            head_lr=self.head_lr,
            max_length=self.max_length,
            eval_every=self.eval_every,
            patience=self.patience,
            train_limit=self.train_limit,
            dev_limit=self.dev_limit,
        )

    @property
    def method(self) -> str:
        return self.baseline or "recycle"
