"""Settings of ``embrecycle select-layer``, validated before anything is loaded."""

from __future__ import annotations

from dataclasses import dataclass

from ..cache.format import STORAGE_DTYPES
from ..config import Checks, Settings, setting
from ..encoder import model_problems
from ..errors import ConfigError
from ..hardware import DEVICE_HELP, PRECISION_CHOICES, PRECISION_HELP, hardware_problems
from ..tasks import TASKS

__all__ = ["DEFAULT_FRACTIONS", "SelectConfig"]

DEFAULT_FRACTIONS = (0.25, 0.5, 0.75)
"""Default candidate cuts as fractions of the layers (the paper's 25/50/75%)."""


@dataclass
class SelectConfig(Settings):
    """What to select a cut for, and how much the selection may cost (what ``embrecycle select-layer`` takes).

    The budget defaults to ``budget_share`` of the estimated training time of one full fine-tuning run with
    ``epochs`` epochs of ``batch_size`` on the whole training file, timed on a few real batches of that size.
    """

    settings_name = "select-layer"

    task: str = setting(help="Task: classification or ner.", choices=sorted(TASKS))
    model: str = setting(help="Base model name (hub id) or local directory.")
    train: str = setting(help="Training file the real training will use (.jsonl/.csv/.tsv, or .conll for ner).")
    dev: str = setting(help="Development file the real training will use; the proxies are scored on a sample of it.")
    out: str = setting("selection", "Directory for selection.json, selection.md, selection.png and the proxy runs.")
    target_retention: float = setting(
        0.99,
        "Recommend the highest cut whose predicted score keeps at least this share of full fine-tuning's, in (0, 1].",
    )
    budget_minutes: float | None = setting(
        None, "Time budget of the whole selection in minutes (default: --budget-share of one full fine-tuning run)."
    )
    budget_share: float = setting(
        0.25,
        "Default budget as a share of one full fine-tuning run (--epochs of --batch-size on the whole training file, "
        "timed on a few real batches), in (0, 1]; ignored with --budget-minutes.",
    )
    candidates: list[int] | None = setting(
        None,
        "Cuts k to evaluate, comma-separated (e.g. 2,3,4), each in 1..N (default: 25/50/75% of the layers).",
    )
    epochs: int = setting(3, "Epochs of the planned training (with --batch-size it sets the default budget).")
    batch_size: int = setting(32, "Batch size of the planned training.")
    lr: float | None = setting(
        None,
        "Learning rate of the recycled proxies (and of the recommended training run); default: recycling's "
        "(3e-4, ner 1e-3).",
    )
    reference_lr: float | None = setting(
        None, "Learning rate of the full fine-tuning reference proxy (default: full fine-tuning's, 1e-4)."
    )
    head_lr: float | None = setting(
        None, "Learning rate of the task head in every proxy (and the recommended run); default: 1e-2."
    )
    proxy_epochs: int = setting(1, "Epochs of each proxy run.")
    proxy_batch_size: int = setting(16, "Batch size of the proxy runs.")
    sample: int | None = setting(None, "Training examples per proxy run (default: as many as the budget allows).")
    dev_sample: int | None = setting(
        None, "Dev examples the proxies are scored on (default: max(--sample, 200), at most all)."
    )
    seed: int = setting(42, "Seed of the samples, the heads and the batch order (the same for every candidate).")
    max_length: int | None = setting(None, "Max tokens per document (default: the model's limit, at most 512).")
    text_field: str = setting("text", "Text field of JSON lines / CSV input.")
    label_field: str = setting("label", "Label field of JSON lines / CSV input.")
    data_format: str | None = setting(
        None, "Input format when the file extension does not say (jsonl, csv, tsv, txt, conll).", flag="--format"
    )
    cache_dtype: str = setting(
        "float16",
        "Storage dtype of the proxies' caches (the real training's --cache-dtype).",
        choices=list(STORAGE_DTYPES),
    )
    device: str = setting("auto", f"Where the models run: {DEVICE_HELP}.")
    precision: str = setting(
        "auto",
        f"Compute precision: {PRECISION_HELP}.",
        choices=PRECISION_CHOICES,
    )
    cache_root: str | None = setting(
        None, "Folder for the proxies' caches (default: $EMBRECYCLE_CACHE_HOME, where `train` looks for them)."
    )

    def problems(self) -> list[str]:
        checks = (
            Checks()
            .choice("task", self.task, sorted(TASKS))
            .require(
                0 < self.target_retention <= 1,
                f"target_retention={self.target_retention} (must be in (0, 1]: 0.99 keeps 99% of full fine-tuning)",
            )
            .require(
                0 < self.budget_share <= 1,
                f"budget_share={self.budget_share} (must be in (0, 1]: 0.25 spends a quarter of one full fine-tuning "
                "run; for more, give budget_minutes)",
            )
            .choice("cache_dtype", self.cache_dtype, STORAGE_DTYPES)
            .extend(hardware_problems(self.device, self.precision))
        )
        if self.candidates is not None:
            bad = [k for k in self.candidates if k < 1]
            checks.require(bool(self.candidates), "candidates=[] (give at least one layer k, or leave it unset)")
            checks.require(
                not bad, f"candidates {bad} (a cut k must be >= 1; k = 0 is full fine-tuning, the reference)"
            )
        return (
            checks.positive(
                epochs=self.epochs,
                batch_size=self.batch_size,
                lr=self.lr,
                proxy_epochs=self.proxy_epochs,
                proxy_batch_size=self.proxy_batch_size,
                budget_minutes=self.budget_minutes,
                reference_lr=self.reference_lr,
                head_lr=self.head_lr,
                sample=self.sample,
                dev_sample=self.dev_sample,
                max_length=self.max_length,
            )
            .extend(model_problems(self.model, None, self.max_length))
            .problems
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
