"""Step 6 of training: what a run produced, written beside its weights (``metrics.json``, the curves)."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..files import write_text_atomic
from .plots import plot_curves

__all__ = ["TrainResult", "write_metrics"]

METRICS_FILE = "metrics.json"
CURVES_FILE = "training_curves.png"

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
    train_truncated: int = 0
    """Training documents cut to ``max_length`` (their ends were not trained on), cached before or not."""
    dev_truncated: int = 0
    """Dev documents cut to ``max_length`` (their ends were not scored)."""
    read_seconds: float = 0.0
    weights_bytes: int = 0
    upper: str = "full"
    device: str = "cpu"
    precision: str = "fp32"
    threads: int = 0
    resumed: bool = False
    """The run was continued from an interrupted one (``resume``); its timings cover the resumed part too."""
    lr: float | None = None
    """The peak learning rate it trained with (``--lr``, or the mode's default)."""
    head_lr: float | None = None
    """The task head's peak learning rate."""
    primary_metric: str = ""
    chance_score: float | None = None
    """What a model that ignores its input scores (:mod:`embrecycle.training.chance`)."""
    constant_score: float | None = None
    """The score of predicting the most frequent training label (NER: ``O`` everywhere)."""
    learned_nothing: bool = False
    """The best dev score is no better than :attr:`chance_score`."""
    losses: list[float] = field(default_factory=list, repr=False)
    step_seconds: list[float] = field(default_factory=list, repr=False)
    dev_predictions: list[Any] = field(default_factory=list, repr=False)
    """Per dev document, the prediction of the best evaluation (labels or tag lists; not in ``metrics.json``)."""

    def summary(self) -> str:
        metric = ", ".join(f"{k} {v:.4f}" for k, v in self.best.items() if k not in ("epoch", "step", "train_loss"))
        threads = f", {self.threads} threads" if self.device == "cpu" and self.threads else ""
        lr = f", lr {self.lr:g}" if self.lr is not None else ""
        if self.head_lr is not None and self.head_lr != self.lr:
            lr += f", head lr {self.head_lr:g}"
        verdict = " (NO BETTER THAN CHANCE)" if self.learned_nothing else ""
        return (
            f"{self.method} ({self.device}, {self.precision}{threads}{lr}): best dev {metric}{verdict} | "
            f"train {self.train_seconds:.1f} s "
            f"({self.examples_per_second:.1f} ex/s), cache build {self.cache_build_seconds:.1f} s, "
            f"{self.trainable_parameters:,} trainable parameters ({self.weights_bytes / 1e6:.1f} MB saved) "
            f"-> {self.run_dir}{self._truncation_note()}"
        )

    def learned_nothing_warning(self) -> str:
        """Why a run that learned nothing did, and what to try (empty when it learned)."""
        if not self.learned_nothing:
            return ""
        best = self.best.get(self.primary_metric, 0.0)
        lr = f"{self.lr:g}" if self.lr is not None else "the default"
        return (
            f"the model learned nothing: its best dev {self.primary_metric} {best:.4f} is no better than chance "
            f"({self.chance_score:.4f}; the most frequent label scores {self.constant_score:.4f}). Try another --lr "
            f"(this run: {lr}), more --epochs, or a sweep over one cache: --lr {_sweep_around(self.lr)}"
        )

    def _truncation_note(self) -> str:
        if not (self.train_truncated or self.dev_truncated):
            return ""
        return (
            f"\nnote: {self.train_truncated} train and {self.dev_truncated} dev documents were longer than "
            "max_length and truncated (raise --max-length to keep their ends)"
        )


_LADDER = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2)


def _sweep_around(lr: float | None) -> str:
    """Three learning rates of the usual 1-3-10 ladder around ``lr`` (itself or its nearest step in the middle)."""
    centre = lr if lr is not None else 3e-4
    i = min(range(len(_LADDER)), key=lambda j: abs(math.log(_LADDER[j] / centre)))
    i = min(max(i, 1), len(_LADDER) - 2)
    return ",".join(f"{x:g}" for x in _LADDER[i - 1 : i + 2])


def write_metrics(result: TrainResult, primary_metric: str, title: str, folder: str | Path | None = None) -> None:
    """``metrics.json`` (every field but the per-step ones) and ``training_curves.png`` in ``folder``
    (default: the run directory)."""
    out = Path(folder if folder is not None else result.run_dir)
    metrics = {k: v for k, v in dataclasses.asdict(result).items() if k not in PER_STEP}
    metrics["primary_metric"] = primary_metric
    plot_curves(result.losses, result.history, primary_metric, out / CURVES_FILE, title=title)
    write_text_atomic(out / METRICS_FILE, json.dumps(metrics, indent=2) + "\n")


def read_metrics(run_dir: str | Path) -> TrainResult:
    """The :class:`TrainResult` a finished run recorded in ``metrics.json`` (without the per-step fields)."""
    metrics = json.loads((Path(run_dir) / METRICS_FILE).read_text(encoding="utf-8"))
    known = {f.name for f in dataclasses.fields(TrainResult)}
    return TrainResult(**{k: v for k, v in metrics.items() if k in known and k != "run_dir"}, run_dir=str(run_dir))
