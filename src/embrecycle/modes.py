"""The registry of training modes: what is trained, and from what.

A mode is one object that says everything the rest of the library needs to know
about it: how it is applied to the model (which parameters it trains, which it
adds), whether the model trains from cached layer-k states or from text, whether
the pretrained base weights stay frozen (so a run depends on them and tasks can
share them), whether it can be exported as a plain transformers model, and which
parameters its run directory saves. No module outside this one compares mode
names.

=================  ==========  ==========  ============  ==========  ================================  ==============
mode               method      trains      from          exportable  saves                             default lr
=================  ==========  ==========  ============  ==========  ================================  ==============
``full``           recycle     k+1..N      the cache     yes         upper layers + head               3e-4, ner 1e-3
``head``           recycle     head        the cache     yes         head                              1e-2
``lora``           recycle     LoRA k+1..N the cache     yes (merged) LoRA weights + head               3e-3
``adapter``        recycle     adapters    the cache     no          adapter weights + head            3e-3, ner 1e-2
``full-finetune``  full-finetune every     text          yes         every weight                      1e-4
``lora-text``      lora        LoRA 1..N   text          yes (merged) LoRA weights + head               1e-3, ner 3e-3
=================  ==========  ==========  ============  ==========  ================================  ==============

The default learning rates are the best of the learning-rate sweeps in ``benchmarks/results`` (MiniLM-L6,
sci-cite and bc5cdr, 2,000 training examples; see the README's "Learning rates"): recycling trains fewer
layers from states that are already contextual and wants a higher rate than full fine-tuning, LoRA and
adapters a higher one still, and a head alone the highest. In every mode the task head, freshly
initialised, trains at 1e-2 (:data:`HEAD_LR`); in the head mode, where it is all that trains, at the
learning rate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .errors import ConfigError
from .upper import (
    SplitTaskModel,
    UpperOptions,
    train_adapters,
    train_everything,
    train_head,
    train_lora,
    train_upper_layers,
)

__all__ = [
    "BASELINES",
    "MODES",
    "UPPER_CHOICES",
    "LearningRates",
    "TrainingMode",
    "get_mode",
    "mode_of_v1_run",
    "resolve_mode",
]


@dataclass(frozen=True)
class LearningRates:
    """A mode's default peak learning rate per task."""

    classification: float
    ner: float

    def for_task(self, task: str) -> float:
        if task not in ("classification", "ner"):
            raise ConfigError(f"task={task!r}: choose classification or ner.")
        return float(getattr(self, task))

    def __str__(self) -> str:
        if self.classification == self.ner:
            return f"{self.classification:g}"
        return f"{self.classification:g} (classification), {self.ner:g} (ner)"


HEAD_LR = LearningRates(1e-2, 1e-2)
"""Every mode's default head learning rate: the rate a freshly initialised head learns at alone. At the body's
rate a head learned nothing on WNUT-16 in 3 epochs under LoRA (entity F1 0.011 at 3e-3; 0.388 at 1e-2) and little
with the upper layers trained (0.119 at 1e-3; 0.359); on sci-cite and bc5cdr (2,000 examples) it moved dev scores
by -0.004 to +0.008 (``benchmarks/results/head_lr.md``)."""


@dataclass(frozen=True)
class TrainingMode:
    """One way of training a task model.

    Attributes:
        name: Registry key, recorded in ``run.json``.
        method: The family a summary or table names the run by: ``recycle``, ``full-finetune`` or ``lora``.
        description: One line for help texts.
        apply: Freezes/unfreezes (and adds) the model's parameters.
        from_text: Trains (and predicts) from token ids through every layer; no cache of its own.
        trains_lower: The layers below the cut are trained (they run with gradients and dropout).
        frozen_base: The pretrained upper layers keep their weights: the run depends on them (their
            fingerprint is recorded) and runs over one base can share them in memory.
        exportable: Can become a plain transformers model (LoRA is merged; adapters cannot).
        upper: What is trained above the cut, as ``--upper`` names it.
        saves: What the run directory's ``model.safetensors`` holds.
        cut: The cut this mode trains at whatever the requested layer is (LoRA from text: 0, every layer).
        lr: The default peak learning rate per task (``TrainConfig.lr`` unset).
        head_lr: The default peak learning rate of the task head (``TrainConfig.head_lr`` unset); None: the
            learning rate (the head mode, where the head is all that trains).
    """

    name: str
    method: str
    description: str
    apply: Callable[[SplitTaskModel, UpperOptions], None]
    saves: str
    upper: str
    from_text: bool = False
    trains_lower: bool = False
    frozen_base: bool = False
    exportable: bool = True
    cut: int | None = None
    lr: LearningRates = field(kw_only=True)  # no default: a mode without its own would train at another's
    head_lr: LearningRates | None = field(default=HEAD_LR, kw_only=True)

    def layer_for(self, requested: int) -> int:
        """The cut a run of this mode uses when ``requested`` is asked for."""
        return requested if self.cut is None else self.cut

    @property
    def uses_cache(self) -> bool:
        return not self.from_text

    @property
    def baseline(self) -> str | None:
        """The ``--baseline`` value that selects this mode (None: a recycling mode, chosen by ``--upper``)."""
        return next((b for b, name in BASELINES.items() if name == self.name), None)


MODES: dict[str, TrainingMode] = {
    m.name: m
    for m in (
        TrainingMode(
            "full", "recycle", "layers k+1..N and the head", train_upper_layers, "upper layers + head", "full",
            lr=LearningRates(3e-4, 1e-3),
        ),
        TrainingMode(
            "head", "recycle", "the head only (frozen features)", train_head, "head", "head", frozen_base=True,
            lr=LearningRates(1e-2, 1e-2), head_lr=None,
        ),
        TrainingMode(
            "lora", "recycle", "LoRA on layers k+1..N, and the head", train_lora, "LoRA weights + head", "lora",
            frozen_base=True, lr=LearningRates(3e-3, 3e-3),
        ),
        TrainingMode(
            "adapter", "recycle", "bottleneck adapters in layers k+1..N, and the head", train_adapters,
            "adapter weights + head", "adapter", frozen_base=True, exportable=False, lr=LearningRates(3e-3, 1e-2),
        ),
        TrainingMode(
            "full-finetune", "full-finetune", "every weight, from text (baseline)", train_everything,
            "every weight", "full", from_text=True, trains_lower=True, lr=LearningRates(1e-4, 1e-4),
        ),
        TrainingMode(
            "lora-text", "lora", "LoRA on every layer, from text (baseline)", train_lora, "LoRA weights + head",
            "lora", from_text=True, frozen_base=True, cut=0, lr=LearningRates(1e-3, 3e-3),
        ),
    )
}  # fmt: skip
"""Every training mode, by name."""

UPPER_CHOICES = ("full", "head", "lora", "adapter")
"""What ``--upper`` selects: the recycling modes."""

BASELINES = {"full-finetune": "full-finetune", "lora": "lora-text"}
"""``--baseline`` values and the modes they select (training from text)."""


def get_mode(name: str) -> TrainingMode:
    """The mode registered as ``name``; a ConfigError lists the known ones."""
    try:
        return MODES[name]
    except KeyError:
        raise ConfigError(f"unknown training mode {name!r}: choose one of {sorted(MODES)}.") from None


def resolve_mode(upper: str, baseline: str | None) -> TrainingMode:
    """The mode that ``--upper`` and ``--baseline`` select (a baseline wins: it trains from text)."""
    if baseline is not None:
        if baseline not in BASELINES:
            raise ConfigError(f"baseline={baseline!r}: choose one of {sorted(BASELINES)} or leave it unset.")
        return MODES[BASELINES[baseline]]
    if upper not in UPPER_CHOICES:
        raise ConfigError(f"upper={upper!r}: choose one of {list(UPPER_CHOICES)}.")
    return MODES[upper]


def mode_of_v1_run(method: str, upper: str) -> TrainingMode:
    """The mode of a run written by embrecycle 0.1.0, whose ``run.json`` split it over ``method`` and ``upper``."""
    if method == "recycle":
        return resolve_mode(upper, None)
    if method in BASELINES:
        return MODES[BASELINES[method]]
    raise ConfigError(f"unknown method {method!r} in a version 1 run record (known: recycle, {', '.join(BASELINES)}).")
