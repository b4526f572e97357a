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
sci-cite and bc5cdr, 2,000 training examples; see the README's "Learning rates"). For a model wider than
MiniLM-L6's 384 (a base or large model) every mode that trains transformer layers except full fine-tuning
(``full``, ``lora``, ``adapter``, ``lora-text``) defaults to a third of the rate or less, as MPNet-base
measured (:func:`width_scale`), and for NER a third again (:data:`WIDE_NER_SCALE`). On a base model: the upper
layers 1e-4 for both tasks, LoRA and adapters 1e-3 (NER 3e-4 and 1e-3), LoRA from text 3e-4. Recycling trains fewer
layers from states that are already contextual and wants a higher rate than full fine-tuning, LoRA and
adapters a higher one still, and a head alone the highest. In every mode the task head, freshly
initialised, trains at 1e-2 (:data:`HEAD_LR`); in the head mode, where it is all that trains, at the
learning rate.
"""

from __future__ import annotations

import math
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


REFERENCE_WIDTH = 384
"""The hidden size the default learning rates were chosen at (MiniLM-L6)."""
WIDTH_EXPONENT = 1.5
"""How the default rates fall with a wider model: ``(REFERENCE_WIDTH / hidden_size) ** WIDTH_EXPONENT``."""
WIDE_NER_SCALE = 1 / 3
"""The further factor for NER on a model wider than :data:`REFERENCE_WIDTH` (one rung down the ladder).

Measured on MPNet-base (768), cut at 6 of 12, on WNUT-16 tweets (1,500 training sentences, 5% of tokens in
an entity, 10 types; ``benchmarks/results/default_lrs.md``): the upper layers at the width-scaled 3e-4 learned
nothing in 3 epochs (entity F1 0.000, O everywhere), at 1e-4 they reached 0.514, level with full fine-tuning
(0.509). Sparse entities collapse to O at rates that bc5cdr's dense ones (14% of tokens) survive; there 1e-4
costs 1.1 dev points against the benchmark's best 3e-4 (0.845 vs 0.855, seed 1,
``benchmarks/results/default_lrs/bc5cdr-mpnet-base-recycle-50-lr1e-4.json``): a too-low rate costs less than a
too-high one.

LoRA above the cut, adapters and LoRA from text fail the same way, and the same two rungs fix them (MPNet-base,
WNUT-16, 3 epochs, seed 1). At their reference-width rates they learned nothing: LoRA 3e-3 0.000 (1e-3: 0.056),
adapters 1e-2 0.000 (3e-3: 0.000), LoRA from text 3e-3 0.000 (1e-3: 0.000), their training loss stuck at
0.35 (O everywhere). Width-scaled with this factor they learn: LoRA at 3e-4 0.361, adapters at 1e-3 0.448,
LoRA from text at 3e-4 0.423. The price on dense entities: LoRA above the cut at 3e-4 scores 0.785 on bc5cdr
against 0.849 at 3e-3, the sweep's best
(``benchmarks/results/default_lrs/bc5cdr-mpnet-base-recycle-50-lora-lr3e-4.json``)."""
LADDER = (1.0, 3.0)
"""Default rates are rounded to the nearest of 1 and 3 times a power of ten (what the sweeps measured)."""


def width_scale(hidden_size: int | None) -> float:
    """The factor the default rate of a width-scaled mode (the upper layers, LoRA, adapters, LoRA from text) is
    multiplied by for a model ``hidden_size`` wide.

    Measured (``benchmarks/results/bench-runs``, seed-1 sweeps, 2,000 training examples): MPNet-base (768 wide)
    trains its upper layers above a cached cut best at a third or less of the rates chosen on MiniLM-L6 (384).
    On sci-cite their best is 1e-4 (the MiniLM default 3e-4 reaches 97.9% of its dev score, 1e-3 0.69 against
    0.83); on bc5cdr 3e-4, the lowest tried (the MiniLM default 1e-3 scores 0.69 against 0.86; 3e-3 learns
    nothing, at 50% and at 75% cached). Full fine-tuning keeps its rate: it is best at its default 1e-4 on both
    datasets. LoRA above the cut is best at 1e-3 on sci-cite (3e-3 reaches 95.7%, 1e-2 learns nothing) and at
    3e-3 on bc5cdr; on BBC News at 1e-3 (0.970 vs 0.957), where adapters lose 1.1 points at 1e-3 (0.941 vs
    0.952); on WNUT-16 LoRA, adapters and LoRA from text learn nothing at their reference rates
    (:data:`WIDE_NER_SCALE`). ``(384 / 768) ** 1.5`` is 0.35, a third once on the ladder.
    Wider models get lower rates still (1,024 wide: 0.23); narrower ones keep the measured rates (nothing was
    measured below 384, and a too-low rate costs less than a too-high one).
    """
    if not hidden_size or hidden_size <= REFERENCE_WIDTH:
        return 1.0
    return float((REFERENCE_WIDTH / hidden_size) ** WIDTH_EXPONENT)


def on_ladder(lr: float) -> float:
    """``lr`` rounded, in log space, to the nearest 1 or 3 times a power of ten."""
    exp = math.floor(math.log10(lr))
    rungs = [m * 10.0**e for e in (exp - 1, exp, exp + 1) for m in LADDER]
    return float(f"{min(rungs, key=lambda r: abs(math.log10(r / lr))):.1g}")


@dataclass(frozen=True)
class LearningRates:
    """A mode's default peak learning rate per task, at :data:`REFERENCE_WIDTH`."""

    classification: float
    ner: float

    def for_task(self, task: str, hidden_size: int | None = None) -> float:
        """The default for ``task``; with ``hidden_size``, scaled for the model's width (:func:`width_scale`; NER
        on a wider model one rung further, :data:`WIDE_NER_SCALE`) and put back on the 1-3-10 ladder."""
        if task not in ("classification", "ner"):
            raise ConfigError(f"task={task!r}: choose classification or ner.")
        base = float(getattr(self, task))
        scale = width_scale(hidden_size)
        if scale == 1.0:
            return base
        return on_ladder(base * scale * (WIDE_NER_SCALE if task == "ner" else 1.0))

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
        lr: The default peak learning rate per task (``TrainConfig.lr`` unset), at :data:`REFERENCE_WIDTH`.
        width_scaled: The default rate falls for models wider than :data:`REFERENCE_WIDTH` (:func:`width_scale`
            and, for NER, :data:`WIDE_NER_SCALE`): the modes that train transformer layers from a pretrained
            start at rates above full fine-tuning's, as measured on MPNet-base.
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
    width_scaled: bool = field(default=False, kw_only=True)
    head_lr: LearningRates | None = field(default=HEAD_LR, kw_only=True)

    def layer_for(self, requested: int) -> int:
        """The cut a run of this mode uses when ``requested`` is asked for."""
        return requested if self.cut is None else self.cut

    def default_lr(self, task: str, hidden_size: int | None = None) -> float:
        """The default peak learning rate for ``task`` on a model ``hidden_size`` wide (None: the reference)."""
        return self.lr.for_task(task, hidden_size if self.width_scaled else None)

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
            lr=LearningRates(3e-4, 1e-3), width_scaled=True,
        ),
        TrainingMode(
            "head", "recycle", "the head only (frozen features)", train_head, "head", "head", frozen_base=True,
            lr=LearningRates(1e-2, 1e-2), head_lr=None,
        ),
        TrainingMode(
            "lora", "recycle", "LoRA on layers k+1..N, and the head", train_lora, "LoRA weights + head", "lora",
            frozen_base=True, lr=LearningRates(3e-3, 3e-3), width_scaled=True,
        ),
        TrainingMode(
            "adapter", "recycle", "bottleneck adapters in layers k+1..N, and the head", train_adapters,
            "adapter weights + head", "adapter", frozen_base=True, exportable=False, lr=LearningRates(3e-3, 1e-2),
            width_scaled=True,
        ),
        TrainingMode(
            "full-finetune", "full-finetune", "every weight, from text (baseline)", train_everything,
            "every weight", "full", from_text=True, trains_lower=True, lr=LearningRates(1e-4, 1e-4),
        ),
        TrainingMode(
            "lora-text", "lora", "LoRA on every layer, from text (baseline)", train_lora, "LoRA weights + head",
            "lora", from_text=True, frozen_base=True, cut=0, lr=LearningRates(1e-3, 3e-3), width_scaled=True,
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
