"""Settings of ``embrecycle select-layer``, validated before anything is loaded."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import check_positive
from ..errors import ConfigError

__all__ = ["DEFAULT_FRACTIONS", "SelectConfig"]

DEFAULT_FRACTIONS = (0.25, 0.5, 0.75)
"""Default candidate cuts as fractions of the layers (the paper's 25/50/75%)."""


@dataclass
class SelectConfig:
    """What to select a cut for, and how much the selection may cost.

    Attributes:
        task: ``classification`` or ``ner``.
        model: Base model name (hub id) or local directory.
        train, dev: The files the real training will use.
        out: Directory for ``selection.json``, ``selection.md`` and ``selection.png`` (and the proxy runs).
        target_retention: Recommend the highest cut whose predicted score is at least this share of
            full fine-tuning's, in (0, 1].
        budget_minutes: Wall-clock budget of the selection; default: ``budget_share`` of the estimated
            training time of one full fine-tuning run with ``epochs`` epochs of ``batch_size`` on the whole
            training file (timed on a few real batches of that size).
        budget_share: The default budget as a share of that run, in (0, 1] (ignored with ``budget_minutes``).
        candidates: Cuts k to evaluate (1..N); default: 25/50/75% of the layers.
        epochs, batch_size: The planned training (they set the default budget).
        lr: Learning rate of the recycled runs; reference_lr: of the full fine-tuning reference (default ``lr``).
        proxy_epochs, proxy_batch_size: The short proxy runs.
        sample: Training examples per proxy run (default: as many as the budget allows).
        dev_sample: Dev examples the proxies are scored on (default: ``max(sample, 200)``, at most all).
        seed: Seeds the sample, the heads and the batch order (the same for every candidate).
        max_length, text_field, label_field, data_format, cache_dtype: As for ``embrecycle train``.
        cache_root: Where the per-candidate caches go (default: where ``embrecycle train`` looks for them).
    """

    task: str
    model: str
    train: str
    dev: str
    out: str
    target_retention: float = 0.99
    budget_minutes: float | None = None
    budget_share: float = 0.25
    candidates: list[int] | None = None
    epochs: int = 3
    batch_size: int = 32
    lr: float = 5e-5
    reference_lr: float | None = None
    proxy_epochs: int = 1
    proxy_batch_size: int = 16
    sample: int | None = None
    dev_sample: int | None = None
    seed: int = 42
    max_length: int | None = None
    text_field: str = "text"
    label_field: str = "label"
    data_format: str | None = None
    cache_dtype: str = "float16"
    cache_root: str | None = None

    def __post_init__(self) -> None:
        from ..tasks import TASKS

        problems = []
        if self.task not in TASKS:
            problems.append(f"task={self.task!r} (choose one of {sorted(TASKS)})")
        if not 0 < self.target_retention <= 1:
            problems.append(
                f"target_retention={self.target_retention} (must be in (0, 1]: 0.99 keeps 99% of full fine-tuning)"
            )
        if not 0 < self.budget_share <= 1:
            problems.append(
                f"budget_share={self.budget_share} (must be in (0, 1]: 0.25 spends a quarter of one full fine-tuning "
                "run; for more, give budget_minutes)"
            )
        if self.candidates is not None:
            if not self.candidates:
                problems.append("candidates=[] (give at least one layer k, or leave it unset)")
            bad = [k for k in self.candidates if k < 1]
            if bad:
                problems.append(f"candidates {bad} (a cut k must be >= 1; k = 0 is full fine-tuning, the reference)")
        if problems:
            raise ConfigError("invalid select-layer settings: " + "; ".join(problems) + ".")
        check_positive(
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            proxy_epochs=self.proxy_epochs,
            proxy_batch_size=self.proxy_batch_size,
            budget_minutes=self.budget_minutes,
            reference_lr=self.reference_lr,
            sample=self.sample,
            dev_sample=self.dev_sample,
            max_length=self.max_length,
        )

    def resolved_candidates(self, num_layers: int) -> list[int]:
        """The cuts to evaluate for a model with ``num_layers`` layers (checked against it)."""
        if self.candidates is None:
            return sorted({min(max(round(f * num_layers), 1), num_layers) for f in DEFAULT_FRACTIONS})
        bad = [k for k in self.candidates if not 1 <= k <= num_layers]
        if bad:
            raise ConfigError(
                f"candidate layers {bad} are out of range: {self.model} has {num_layers} layers; "
                f"choose cuts k in 1..{num_layers}."
            )
        return sorted(set(self.candidates))
