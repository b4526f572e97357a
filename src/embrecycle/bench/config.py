"""What `embrecycle bench` runs: models, datasets, methods, seeds, subsets; validated, saved with the results."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import check_positive
from ..errors import ConfigError

__all__ = ["DATASETS", "METHODS", "MODELS", "BenchConfig", "Method"]


@dataclass(frozen=True)
class Dataset:
    """A benchmark dataset: ``<data_dir>/<folder>/{train,dev,test}.<ext>``."""

    name: str
    task: str
    ext: str
    metric: str


DATASETS = {
    d.name: d
    for d in (
        Dataset("sci-cite", "classification", "jsonl", "macro_f1"),
        Dataset("chemprot", "classification", "jsonl", "macro_f1"),
        Dataset("bc5cdr", "ner", "conll", "f1"),
    )
}

MODELS = {"minilm-l6": "MiniLM-L6 (all-MiniLM-L6-v2)", "mpnet-base": "MPNet-base (all-mpnet-base-v2)"}
"""Names of the offline models (resolved by :mod:`embrecycle.offline_models`); any path or hub id works too."""


@dataclass(frozen=True)
class Method:
    """One way to train a task model.

    Attributes:
        name: Row label.
        baseline: ``full-finetune``/``lora`` (from text, no cache) or None (recycling).
        upper: What is trained above the cut.
        fraction: Cut as a fraction of the layers (k = round(fraction * N)); 1.0 caches every layer.
        lr: Learning rate per task kind.
    """

    name: str
    baseline: str | None
    upper: str
    fraction: float
    lr: dict[str, float]


METHODS = {
    m.name: m
    for m in (
        Method("full-finetune", "full-finetune", "full", 0.0, {"classification": 3e-4, "ner": 3e-4}),
        Method("recycle-25", None, "full", 0.25, {"classification": 3e-4, "ner": 1e-3}),
        Method("recycle-50", None, "full", 0.5, {"classification": 3e-4, "ner": 1e-3}),
        Method("recycle-75", None, "full", 0.75, {"classification": 3e-4, "ner": 1e-3}),
        Method("frozen-head", None, "head", 1.0, {"classification": 1e-2, "ner": 1e-2}),
        Method("lora", "lora", "lora", 0.0, {"classification": 1e-3, "ner": 3e-3}),
        Method("recycle-50-lora", None, "lora", 0.5, {"classification": 3e-3, "ner": 3e-3}),
        Method("recycle-50-adapter", None, "adapter", 0.5, {"classification": 3e-3, "ner": 1e-2}),
    )
}
"""Every method, with the learning rate that the learning-rate sweeps in ``benchmarks/results`` chose."""


@dataclass
class BenchConfig:
    """Settings of one benchmark run (saved in the results file).

    Attributes:
        models: Offline model names (:data:`MODELS`), paths or hub ids.
        datasets: Names in :data:`DATASETS`, read from ``data_dir``.
        methods: Names in :data:`METHODS`.
        seeds: One training run per seed (scores are reported as mean and std).
        train_limit, dev_limit, test_limit: Seeded subsets per dataset (None: all).
        epochs, batch_size, max_length: Shared by every method.
        data_dir: Folder with one sub-folder per dataset.
        out: Where results, report and plots are written.
        quick: Tiny subsets for a smoke run (set by ``--quick``).
        memory: Measure each method's peak memory in a fresh process (first seed only; a few seconds each).
    """

    models: list[str] = field(default_factory=lambda: ["minilm-l6", "mpnet-base"])
    datasets: list[str] = field(default_factory=lambda: ["sci-cite", "chemprot", "bc5cdr"])
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3])
    train_limit: int | None = 600
    dev_limit: int | None = 300
    test_limit: int | None = 300
    epochs: int = 3
    batch_size: int = 32
    max_length: int = 128
    data_dir: str = "../shared/data"
    out: str = "benchmarks/results"
    quick: bool = False
    memory: bool = True

    def __post_init__(self) -> None:
        problems = []
        for kind, names, known in (("datasets", self.datasets, DATASETS), ("methods", self.methods, METHODS)):
            unknown = [n for n in names if n not in known]
            if unknown:
                problems.append(f"unknown {kind} {unknown} (choose from {sorted(known)})")
        if not self.models or not self.datasets or not self.methods or not self.seeds:
            problems.append("models, datasets, methods and seeds must each name at least one")
        if problems:
            raise ConfigError("invalid benchmark settings: " + "; ".join(problems) + ".")
        check_positive(
            epochs=self.epochs,
            batch_size=self.batch_size,
            max_length=self.max_length,
            train_limit=self.train_limit,
            dev_limit=self.dev_limit,
            test_limit=self.test_limit,
        )

    @classmethod
    def quick_config(cls, **overrides: object) -> BenchConfig:
        """Tiny subsets, one epoch, one seed: the whole pipeline in about a minute or two."""
        base: dict[str, object] = {
            "models": ["minilm-l6"],
            "datasets": ["sci-cite", "bc5cdr"],
            "seeds": [1],
            "train_limit": 48,
            "dev_limit": 24,
            "test_limit": 24,
            "epochs": 1,
            "max_length": 64,
            "quick": True,
            "memory": False,
        }
        return cls(**{**base, **overrides})  # type: ignore[arg-type]
