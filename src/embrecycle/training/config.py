"""Training settings, validated up front, saved next to every run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..cache.format import STORAGE_DTYPES
from ..cache.settings import TRUNCATION_MODES
from ..config import Checks, Settings, setting
from ..data.readers import FORMATS
from ..encoder import model_problems, model_width
from ..fusion import FUSIONS
from ..hardware import DEVICE_HELP, PRECISION_CHOICES, PRECISION_HELP, hardware_problems
from ..modes import BASELINES, UPPER_CHOICES, TrainingMode, resolve_mode
from ..tasks import TASKS
from ..upper import UpperOptions

__all__ = ["TrainConfig"]


@dataclass
class TrainConfig(Settings):
    """Everything that defines a training run (what ``embrecycle train`` takes).

    ``upper`` and ``baseline`` together select the training mode (:attr:`mode`, see :mod:`embrecycle.modes`).
    The optimiser is AdamW with linear warmup then linear decay and gradient clipping; biases and norms
    have no weight decay.
    """

    settings_name = "training"

    task: str = setting(help="Task: classification or ner.", choices=sorted(TASKS))
    model: str = setting(help="Base model name (hub id) or local directory.")
    layer: int = setting(help="Cut k: layers 1..k come from the cache, k+1..N are run.")
    train: str = setting(help="Training file (.jsonl/.csv/.tsv, or .conll for ner).")
    dev: str = setting(help="Development file, evaluated during training.")
    out: str = setting(help="Run directory to write.")
    cache: str | None = setting(
        None, "Cache directory or URL (default: derived from the settings under $EMBRECYCLE_CACHE_HOME)."
    )
    upper: str = setting(
        "full",
        "What is trained above the cut: full, head, lora or adapter (the head always). Several (full,lora) make a "
        "sweep.",
        choices=UPPER_CHOICES,
        sweep=True,
    )
    upper_options: UpperOptions = setting(
        default_factory=UpperOptions, help="LoRA and adapter settings.", cli="given as its own fields (--lora-r, ...)"
    )
    baseline: str | None = setting(
        None,
        "Train from text instead: full-finetune (every weight) or lora (LoRA on every layer).",
        choices=sorted(BASELINES),
    )
    revision: str | None = setting(None, "Hub revision (branch, tag or commit) of the base model.")
    device: str = setting("auto", f"Where the model trains: {DEVICE_HELP}.")
    precision: str = setting(
        "auto",
        f"Compute precision (autocast; weights stay float32): {PRECISION_HELP}; fp16 with loss scaling. The "
        "cache's states are computed in it too.",
        choices=PRECISION_CHOICES,
    )
    epochs: int = setting(3, "Epochs.")
    lr: float | None = setting(
        None,
        "Peak learning rate (AdamW); default: the training mode's (full 3e-4, ner 1e-3; head 1e-2; lora 3e-3; "
        "adapter 3e-3, ner 1e-2; full-finetune 1e-4; lora from text 1e-3, ner 3e-3; on models wider than 384 all "
        "but head and full-finetune at a third of that, ner a third again: on a base model full 1e-4, lora 1e-3, "
        "ner 3e-4, adapter 1e-3, lora from text 3e-4). Several (1e-4,3e-4) make a sweep.",
        sweep=True,
    )
    head_lr: float | None = setting(
        None,
        "Peak learning rate of the task head (classifier, and BERT's pooler); default: 1e-2 (a fresh head learns "
        "at a head's rate, not the body's), and --lr in the head mode. Several make a sweep.",
        sweep=True,
    )
    batch_size: int = setting(32, "Examples per step.")
    seed: int = setting(
        42, "Random seed (head initialisation, shuffling, subsets). Several (1,2,3) make a sweep.", sweep=True
    )
    warmup_ratio: float = setting(0.1, "Fraction of the steps for linear warmup, in [0, 1).")
    weight_decay: float = setting(0.01, "AdamW weight decay.")
    max_grad_norm: float = setting(1.0, "Gradient clipping norm.")
    max_length: int | None = setting(None, "Max tokens per document (default: the model's limit, at most 512).")
    truncation: str = setting(
        "truncate", "'truncate' longer documents (counted) or stop with an 'error'.", choices=TRUNCATION_MODES
    )
    eval_every: int | None = setting(None, "Evaluate every N steps (default: at the end of each epoch).")
    patience: int | None = setting(None, "Early stopping: evaluations without improvement (default: never stop).")
    train_limit: int | None = setting(None, "Use at most N training examples (a seeded random subset).")
    dev_limit: int | None = setting(None, "Use at most N dev examples (a seeded random subset).")
    text_field: str = setting("text", "Text field of JSON lines / CSV input.")
    label_field: str = setting("label", "Label field of JSON lines / CSV input.")
    data_format: str | None = setting(
        None, "Input format when the file extension does not say.", flag="--format", choices=FORMATS
    )
    cache_dtype: str = setting("float16", "Storage dtype of the cache.", choices=list(STORAGE_DTYPES))
    save_every: int | None = setting(
        None, "Also save the resume state every N steps (default: at each evaluation only); see --resume."
    )
    overwrite: bool = setting(
        False, "Replace an existing run directory at --out (the old run stays until the new one is complete)."
    )
    resume: bool = setting(
        False,
        "Continue an interrupted run of the same settings from its last evaluation (its partial files are in "
        "OUT.partial); ends with the same weights as an uninterrupted run.",
    )
    source_cache: str | None = setting(
        None,
        "Cross-model recycling: a cache of another (source) model's states to fuse into this (consumer) model's "
        "input: its embeddings joined with the source states aligned onto its tokens by character spans, "
        "projected back, then all its layers: with --layer 0 all of them train (as --upper says; its token "
        "embeddings stay as pretrained, as in any recycled run), with --layer K layers 1..K keep their weights "
        "and K+1..N train. Missing documents are added to it.",
    )
    fusion: str = setting(
        "linear",
        "Cross-model fusion layer: linear (concatenate and project, as in the paper; it scored higher than mlp on "
        "sci-cite and bc5cdr) or mlp (the embeddings plus a two-layer MLP of both); each starts as the plain "
        "consumer.",
        choices=FUSIONS,
    )
    fusion_size: int | None = setting(
        None,
        "Cross-model: the fusion layer's output width, checked against the consumer's hidden size (which it must "
        "equal: the consumer's layers read it); default: that size.",
    )
    init_from: str | None = setting(
        None,
        "Run directory (same base model, task and labels) whose saved weights start this run's trained weights; "
        "the layers below the cut stay pretrained.",
    )

    def __post_init__(self) -> None:
        if not isinstance(self.upper_options, UpperOptions):
            self.upper_options = UpperOptions.from_dict(self.upper_options)
        super().__post_init__()

    def problems(self) -> list[str]:
        return (
            Checks()
            .require(
                not (self.resume and self.overwrite),
                "resume and overwrite exclude each other: --resume "
                "continues the unfinished run, --overwrite starts it over",
            )
            .choice("task", self.task, sorted(TASKS))
            .choice("upper", self.upper, UPPER_CHOICES)
            .choice("baseline", self.baseline, sorted(BASELINES), optional=True)
            .choice("truncation", self.truncation, TRUNCATION_MODES)
            .choice("cache_dtype", self.cache_dtype, STORAGE_DTYPES)
            .choice("data_format", self.data_format, FORMATS, optional=True)
            .choice("fusion", self.fusion, FUSIONS)
            .extend(self._cross_model_problems())
            .extend(hardware_problems(self.device, self.precision))
            .within("warmup_ratio", self.warmup_ratio, 0, 1, high_open=True)
            .non_negative(weight_decay=self.weight_decay, layer=self.layer)
            .positive(
                epochs=self.epochs,
                lr=self.lr,
                batch_size=self.batch_size,
                head_lr=self.head_lr,
                max_grad_norm=self.max_grad_norm,
                max_length=self.max_length,
                eval_every=self.eval_every,
                save_every=self.save_every,
                patience=self.patience,
                train_limit=self.train_limit,
                dev_limit=self.dev_limit,
            )
            .extend(model_problems(self.model, self.revision, self.max_length))
            .problems
        )

    def _cross_model_problems(self) -> list[str]:
        if self.source_cache is None:
            return (
                [] if self.fusion_size is None else ["--fusion-size without --source-cache (it sizes the fusion layer)"]
            )
        checks = Checks().positive(fusion_size=self.fusion_size)
        checks.require(
            self.baseline is None,
            f"--source-cache with --baseline {self.baseline} (a cross-model consumer trains on its fused input; "
            "choose what trains with --upper)",
        )
        checks.require(
            self.cache is None,
            "--source-cache with --cache: a cross-model consumer reads its own tokens from text and the source "
            "model's states from --source-cache; drop --cache",
        )
        return checks.problems

    @property
    def mode(self) -> TrainingMode:
        """The training mode ``upper`` and ``baseline`` select."""
        return resolve_mode(self.upper, self.baseline)

    @property
    def learning_rate(self) -> float:
        """The peak learning rate: ``lr``, else the training mode's default for the task and the model's width
        (:func:`embrecycle.modes.width_scale`, :data:`embrecycle.modes.WIDE_NER_SCALE`)."""
        if self.lr is not None:
            return self.lr
        return self.mode.default_lr(self.task, model_width(self.model, self.revision))

    @property
    def head_learning_rate(self) -> float:
        """The task head's peak learning rate: ``head_lr``, else the mode's default head rate (the head mode:
        :attr:`learning_rate`, the head being all that trains)."""
        if self.head_lr is not None:
            return self.head_lr
        if self.mode.head_lr is None:
            return self.learning_rate
        return self.mode.head_lr.for_task(self.task)

    @property
    def method(self) -> str:
        return self.mode.method

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "upper_options": self.upper_options.to_dict()}
