"""What a layer selection measured and recommends: one :class:`Candidate` per cut, the :class:`Selection`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .._version import __version__

__all__ = ["Candidate", "Selection"]


@dataclass
class Candidate:
    """What one cut measured (``status`` ``skipped (budget)``: no proxy run, only the ceiling)."""

    layer: int
    fraction: float
    status: str
    proxy_score: float | None = None
    measured_retention: float | None = None
    predicted_retention: float | None = None
    half_proxy_score: float | None = None
    half_retention: float | None = None
    retention_interval: list[float] | None = None
    stable: bool | None = None
    train_examples_per_second: float | None = None
    train_speedup: float | None = None
    ceiling: float | None = None
    infer_docs_per_second: float | None = None
    infer_speedup: float | None = None
    cache_bytes_per_token: float | None = None
    corpus_cache_bytes: int | None = None
    cache_build_seconds: float | None = None
    cache: str | None = None
    seconds: float = 0.0


@dataclass
class Selection:
    """The selection's result (``selection.json``)."""

    model: str
    task: str
    metric: str
    num_layers: int
    target_retention: float
    recommended: int | None
    reference: dict[str, Any]
    candidates: list[Candidate]
    sample: int
    dev_sample: int
    proxy_epochs: int
    train_examples: int
    dev_examples: int
    corpus_tokens: int
    estimated_full_finetune_seconds: float
    budget_seconds: float
    seconds: float
    config: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    embrecycle_version: str = __version__

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def candidate(self, layer: int) -> Candidate:
        return next(c for c in self.candidates if c.layer == layer)

    def train_command(self) -> str | None:
        """The ``embrecycle train`` command for the recommended cut (reusing its cache)."""
        if self.recommended is None:
            return None
        c = self.config
        cache = self.candidate(self.recommended).cache
        return (
            f"embrecycle train --task {self.task} --model {self.model} --layer {self.recommended} "
            f"--train {c['train']} --dev {c['dev']} --epochs {c['epochs']} "
            + (f"--lr {c['lr']} " if c.get("lr") is not None else "")
            + (f"--head-lr {c['head_lr']} " if c.get("head_lr") is not None else "")
            + f"--batch-size {c['batch_size']} --cache {cache} --out RUN_DIR"
        )
