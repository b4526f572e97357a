"""What `embrecycle bench` runs: models, the user's datasets, methods, seeds, subsets; saved with the results."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import Checks, Settings, setting
from ..data.readers import FORMATS
from ..errors import ConfigError
from ..hardware import DEVICE_HELP, PRECISION_CHOICES, PRECISION_HELP, hardware_problems
from ..modes import TrainingMode, resolve_mode
from ..tasks import TASKS, get_task

__all__ = [
    "DATASET_FORMAT",
    "LR_LADDER",
    "METHODS",
    "MODELS",
    "SPLITS",
    "BenchConfig",
    "BenchDataset",
    "Method",
    "dataset_names",
    "lr_grid",
    "parse_limits",
]

SPLITS = ("train", "dev", "test")

DATASET_FORMAT = "NAME=TASK:DIR or NAME=TASK:TRAIN,DEV,TEST"
"""How a dataset is given on the command line (:meth:`BenchDataset.parse`)."""

MODELS = {"minilm-l6": "MiniLM-L6 (all-MiniLM-L6-v2)", "mpnet-base": "MPNet-base (all-mpnet-base-v2)"}
"""Names of the offline models (resolved by :mod:`embrecycle.offline_models`); any path or hub id works too."""


@dataclass(frozen=True)
class BenchDataset:
    """One dataset of the benchmark: its name (a label in the report), task and train/dev/test files.

    The metric is the task's primary one (classification: macro-F1; NER: entity F1).

    Example:
        >>> BenchDataset.parse("reviews=classification:data/reviews")  # doctest: +SKIP
        BenchDataset(name='reviews', task='classification', train='data/reviews/train.jsonl', ...)
    """

    name: str
    task: str
    train: str
    dev: str
    test: str

    @property
    def metric(self) -> str:
        return get_task(self.task).primary_metric

    def path(self, split: str) -> Path:
        """The file of ``split`` (``train``, ``dev`` or ``test``)."""
        return Path(getattr(self, split))

    def spec(self) -> str:
        """This dataset in the command-line form (three files)."""
        return f"{self.name}={self.task}:{self.train},{self.dev},{self.test}"

    @classmethod
    def from_dir(cls, name: str, task: str, directory: str | Path) -> BenchDataset:
        """The dataset whose files are ``<directory>/{train,dev,test}.<ext>`` (ext: jsonl, csv, tsv, txt, conll)."""
        folder = Path(directory)
        found: dict[str, str] = {}
        missing, ambiguous = [], []
        for split in SPLITS:
            hits = [folder / f"{split}.{ext}" for ext in FORMATS if (folder / f"{split}.{ext}").is_file()]
            if not hits:
                missing.append(split)
            elif len(hits) > 1:
                ambiguous.append(", ".join(p.name for p in hits))
            else:
                found[split] = str(hits[0])
        if missing:
            raise ConfigError(
                f"dataset {name!r}: splits not found in {folder}: {missing} (expected "
                f"{{train,dev,test}}.{{{','.join(FORMATS)}}}); point it at the folder holding them, or give the "
                "three files as NAME=TASK:TRAIN,DEV,TEST"
            )
        if ambiguous:
            raise ConfigError(
                f"dataset {name!r}: {folder} holds several files for one split ({'; '.join(ambiguous)}); "
                "give the three files as NAME=TASK:TRAIN,DEV,TEST"
            )
        return cls(name, task, found["train"], found["dev"], found["test"])

    @classmethod
    def parse(cls, text: str) -> BenchDataset:
        """A dataset from ``NAME=TASK:DIR`` (a folder with train/dev/test files) or ``NAME=TASK:TRAIN,DEV,TEST``.

        Raises:
            ConfigError: naming the value and the form it should take.
        """
        name, eq, rest = text.partition("=")
        task, colon, location = rest.partition(":")
        name, task, location = name.strip(), task.strip(), location.strip()
        if not (eq and colon and name and task and location):
            raise ConfigError(
                f"--dataset {text!r} is not {DATASET_FORMAT} (e.g. reviews=classification:data/reviews, "
                "a folder holding train/dev/test files)"
            )
        if task not in TASKS:
            raise ConfigError(f"--dataset {text!r}: task {task!r} is not known; choose one of {sorted(TASKS)}")
        files = [p.strip() for p in location.split(",")]
        if len(files) == 1:
            return cls.from_dir(name, task, files[0])
        if len(files) != 3 or not all(files):
            raise ConfigError(
                f"--dataset {text!r}: give one folder or three files TRAIN,DEV,TEST (got {len(files)} paths)"
            )
        absent = [p for p in files if not Path(p).is_file()]
        if absent:
            raise ConfigError(f"dataset {name!r}: splits not found: no file {absent}; check the paths")
        return cls(name, task, *files)

    @classmethod
    def coerce(cls, value: BenchDataset | str | dict[str, Any]) -> BenchDataset:
        """A dataset from its command-line form, a dict (a saved results file) or itself."""
        if isinstance(value, BenchDataset):
            return value
        if isinstance(value, dict):
            return cls(**value)
        return cls.parse(value)


def dataset_names(saved: list[Any]) -> list[str]:
    """The dataset names of saved settings: ``NAME=TASK:...`` forms, dicts, or (older results files) bare names."""
    return [d["name"] if isinstance(d, dict) else str(d).partition("=")[0] for d in saved]


@dataclass(frozen=True)
class Method:
    """One way to train a task model.

    Attributes:
        name: Row label.
        baseline: ``full-finetune``/``lora`` (from text, no cache) or None (recycling).
        upper: What is trained above the cut.
        fraction: Cut as a fraction of the layers (k = round(fraction * N)); 1.0 caches every layer.

    A method trains at its mode's default learning rates (:mod:`embrecycle.modes`) unless the benchmark
    sweeps them (``lr_steps``).
    """

    name: str
    baseline: str | None
    upper: str
    fraction: float

    def default_lr(self, task: str) -> float:
        """The mode's default learning rate for ``task``."""
        # the reference-width default for every model: both models are swept over the same rates (the sweep
        # spans this rate and one rung either side), whatever default a wider model trains at without --lr
        return self.mode.lr.for_task(task)

    @property
    def mode(self) -> TrainingMode:
        """The training mode this method trains with."""
        return resolve_mode(self.upper, self.baseline)

    @property
    def recycles(self) -> bool:
        """Trains on cached states (False: a baseline that trains from text)."""
        return self.mode.uses_cache

    @property
    def is_layer_cut(self) -> bool:
        """Recycling with the full upper layers trained at a cut below N (recycle-25/50/75)."""
        mode = self.mode
        return mode.uses_cache and not mode.frozen_base and self.fraction < 1


METHODS = {
    m.name: m
    for m in (
        Method("full-finetune", "full-finetune", "full", 0.0),
        Method("recycle-25", None, "full", 0.25),
        Method("recycle-50", None, "full", 0.5),
        Method("recycle-75", None, "full", 0.75),
        Method("frozen-head", None, "head", 1.0),
        Method("lora", "lora", "lora", 0.0),
        Method("recycle-50-lora", None, "lora", 0.5),
        Method("recycle-50-adapter", None, "adapter", 0.5),
    )
}
"""Every method the benchmark knows."""

LR_LADDER = tuple(m * 10.0**e for e in range(-7, 1) for m in (1.0, 3.0))
"""The learning rates a sweep steps along: 1e-7, 3e-7, ..., 1, 3 (each about 3.2x the last)."""


def lr_grid(default: float, steps: int) -> list[float]:
    """``default`` and the ``steps`` rungs of :data:`LR_LADDER` below and above it, ascending.

    Example:
        >>> [f"{x:g}" for x in lr_grid(3e-4, 1)]
        ['0.0001', '0.0003', '0.001']
    """
    if steps <= 0:
        return [default]
    ladder = [float(f"{x:.0e}") for x in LR_LADDER]
    below = [x for x in ladder if x < default * (1 - 1e-9)][-steps:]
    above = [x for x in ladder if x > default * (1 + 1e-9)][:steps]
    return [*below, default, *above]


EVERY_EXAMPLE = "all"
"""The ``--limit`` value that takes a whole split."""


def parse_limits(specs: list[str]) -> tuple[dict[tuple[str, str], int | None], list[str]]:
    """``NAME:SPLIT=N`` / ``NAME:SPLIT=all`` entries as ``{(name, split): limit}``, and the problems found."""
    limits: dict[tuple[str, str], int | None] = {}
    problems = []
    for spec in specs:
        key, eq, value = spec.partition("=")
        name, colon, split = key.partition(":")
        value = value.strip()
        if not (eq and colon and name.strip() and split.strip() in SPLITS):
            problems.append(f"--limit {spec!r} is not NAME:SPLIT=N or NAME:SPLIT=all (SPLIT: {', '.join(SPLITS)})")
            continue
        if value == EVERY_EXAMPLE:
            limits[(name.strip(), split.strip())] = None
        elif value.isdigit() and int(value) > 0:
            limits[(name.strip(), split.strip())] = int(value)
        else:
            problems.append(f"--limit {spec!r}: the limit must be a positive number of examples or 'all'")
    return limits, problems


@dataclass
class BenchConfig(Settings):
    """Settings of one benchmark run (what ``embrecycle bench`` takes; saved in the results file).

    ``datasets`` holds each dataset in its command-line form (:data:`DATASET_FORMAT`; a
    :class:`BenchDataset` is turned into it); :meth:`bench_datasets` gives them parsed.
    """

    settings_name = "benchmark"

    models: list[str] = setting(
        default_factory=lambda: ["minilm-l6", "mpnet-base"],
        help="Model to benchmark: minilm-l6 or mpnet-base (offline models), or a path / hub id; repeat for several.",
        flag="--model",
    )
    datasets: list[str] = setting(
        default_factory=list,
        help=(
            "Dataset to benchmark, as NAME=TASK:DIR (DIR holds train/dev/test.{jsonl,csv,tsv,txt,conll}) or "
            "NAME=TASK:TRAIN,DEV,TEST (three files); TASK is classification (scored by macro-F1) or ner (entity "
            "F1); repeat for several."
        ),
        flag="--dataset",
        comma_separated=False,
    )
    methods: list[str] = setting(
        default_factory=lambda: list(METHODS),
        help="Method to run (repeat; default: all).",
        flag="--method",
        choices=list(METHODS),
    )
    seeds: list[int] = setting(
        default_factory=lambda: [1, 2, 3], help="Training seed; one run per seed and method (repeat).", flag="--seed"
    )
    train_limit: int | None = setting(600, "Training examples per dataset (a seeded subset; unset: all).")
    dev_limit: int | None = setting(300, "Dev examples per dataset (a seeded subset; unset: all).")
    test_limit: int | None = setting(300, "Test examples per dataset (a seeded subset; unset: all).")
    limits: list[str] = setting(
        default_factory=list,
        help="One dataset's own limit, as NAME:SPLIT=N or NAME:SPLIT=all (e.g. chemprot:train=all); repeat.",
        flag="--limit",
        comma_separated=False,
    )
    lr_steps: int = setting(
        0,
        "Sweep each method's learning rate on the first seed: its default and this many rungs either side on the "
        "1-3-10 ladder (1: three rates); the later seeds train at the best by dev score. 0: the defaults only.",
    )
    overwrite: bool = setting(
        False, "Discard the runs kept in --out by a benchmark with other settings (default: refuse and name them)."
    )
    epochs: int = setting(3, "Epochs for every method.")
    batch_size: int = setting(32, "Batch size for every method.")
    max_length: int = setting(128, "Max tokens per document for every method.")
    out: str = setting("bench-results", "Where results, report and plots go.")
    device: str = setting("auto", f"Where the models run: {DEVICE_HELP}.")
    precision: str = setting(
        "auto",
        f"Compute precision: {PRECISION_HELP}.",
        choices=PRECISION_CHOICES,
    )
    quick: bool = setting(
        False,
        "A smoke run: minilm-l6, 48 train / 24 dev / 24 test examples, one epoch, seed 1, max length 64, no memory "
        "runs (options given explicitly still apply).",
    )
    memory: bool = setting(
        True, "Measure each method's peak memory in a fresh process (first seed only; a few seconds each)."
    )

    def __post_init__(self) -> None:
        self._datasets: list[BenchDataset] = []
        self._dataset_problems: list[str] = []
        specs = []
        for value in self.datasets:
            try:
                ds = BenchDataset.coerce(value)
            except ConfigError as e:
                self._dataset_problems.append(str(e).rstrip("."))
                specs.append(value if isinstance(value, str) else str(value))
                continue
            self._datasets.append(ds)
            specs.append(value if isinstance(value, str) else ds.spec())
        self.datasets = specs
        super().__post_init__()

    def problems(self) -> list[str]:
        checks = Checks()
        unknown = [n for n in self.methods if n not in METHODS]
        checks.require(not unknown, f"unknown methods {unknown} (choose from {sorted(METHODS)})")
        checks.require(
            bool(self.models and self.methods and self.seeds), "models, methods and seeds must each name at least one"
        )
        checks.require(
            bool(self.datasets),
            f"no dataset given: name at least one as --dataset {DATASET_FORMAT} (TASK: classification or ner)",
        )
        for problem in self._dataset_problems:
            checks.add(problem)
        names = [d.name for d in self._datasets]
        twice = sorted({n for n in names if names.count(n) > 1})
        checks.require(not twice, f"dataset names {twice} are given twice (each must name one dataset)")
        checks.extend(hardware_problems(self.device, self.precision))
        limits, limit_problems = parse_limits(self.limits)
        checks.extend(limit_problems)
        strangers = sorted({name for name, _ in limits if name not in names})
        checks.require(not strangers, f"--limit names datasets {strangers} that no --dataset gives (given: {names})")
        checks.non_negative(lr_steps=self.lr_steps)
        return checks.positive(
            epochs=self.epochs,
            batch_size=self.batch_size,
            max_length=self.max_length,
            train_limit=self.train_limit,
            dev_limit=self.dev_limit,
            test_limit=self.test_limit,
        ).problems

    def bench_datasets(self) -> list[BenchDataset]:
        """The datasets, parsed (in the order given)."""
        return list(self._datasets)

    def limit(self, dataset: str, split: str) -> int | None:
        """How many examples of ``split`` the benchmark takes from ``dataset`` (None: all)."""
        own = parse_limits(self.limits)[0]
        if (dataset, split) in own:
            return own[(dataset, split)]
        return {"train": self.train_limit, "dev": self.dev_limit, "test": self.test_limit}[split]

    @classmethod
    def quick_config(cls, **overrides: object) -> BenchConfig:
        """Tiny subsets, one epoch, one seed: the whole pipeline in about a minute or two."""
        base: dict[str, object] = {
            "models": ["minilm-l6"],
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
