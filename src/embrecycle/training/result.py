"""Step 6 of training: what a run produced, written beside its weights (``metrics.json``, the curves)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .plots import plot_curves

__all__ = ["TrainResult", "write_metrics"]

PER_STEP = ("losses", "step_seconds", "dev_predictions")
"""Fields kept in memory but not written to ``metrics.json``."""


@dataclass
class TrainResult:
    """What a run produced (also in ``metrics.json``)."""

    run_dir: str
    method: str
    best: dict[str, Any]
    history: list[dict[str, Any]]
    train_seconds: float
    epoch_seconds: list[float]
    examples_per_second: float
    cache_build_seconds: float
    eval_seconds: float
    total_seconds: float
    trainable_parameters: int
    train_examples: int
    dev_examples: int
    cache: str | None = None
    read_seconds: float = 0.0
    weights_bytes: int = 0
    upper: str = "full"
    device: str = "cpu"
    precision: str = "fp32"
    threads: int = 0
    losses: list[float] = field(default_factory=list, repr=False)
    step_seconds: list[float] = field(default_factory=list, repr=False)
    dev_predictions: list[Any] = field(default_factory=list, repr=False)
    """Per dev document, the prediction of the best evaluation (labels or tag lists; not in ``metrics.json``)."""

    def summary(self) -> str:
        metric = ", ".join(f"{k} {v:.4f}" for k, v in self.best.items() if k not in ("epoch", "step", "train_loss"))
        threads = f", {self.threads} threads" if self.device == "cpu" and self.threads else ""
        return (
            f"{self.method} ({self.device}, {self.precision}{threads}): best dev {metric} | "
            f"train {self.train_seconds:.1f} s "
            f"({self.examples_per_second:.1f} ex/s), cache build {self.cache_build_seconds:.1f} s, "
            f"{self.trainable_parameters:,} trainable parameters ({self.weights_bytes / 1e6:.1f} MB saved) "
            f"-> {self.run_dir}"
        )


def write_metrics(result: TrainResult, primary_metric: str, title: str) -> None:
    """``metrics.json`` (every field but the per-step ones) and ``training_curves.png`` in the run directory."""
    out = Path(result.run_dir)
    metrics = {k: v for k, v in dataclasses.asdict(result).items() if k not in PER_STEP}
    metrics["primary_metric"] = primary_metric
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    plot_curves(result.losses, result.history, primary_metric, out / "training_curves.png", title=title)
