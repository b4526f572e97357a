"""The proxy runs: seeded samples of the user's files, and the short training runs on them.

Every proxy (the full fine-tuning reference, k = 0, and recycling at each candidate k) trains on the same
sample with the same seed and batch order; only the cut differs.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from ..cache.builder import BuildConfig, cache_settings_for
from ..cache.location import default_cache_dir
from ..data.readers import Example, read_examples
from ..data.writers import write_examples
from ..encoder import LoadedEncoder, load_encoder
from ..errors import InputDataError
from ..hardware import resolve_hardware
from ..split import SplitEncoder
from ..training import TrainConfig, TrainResult, train
from .config import SelectConfig

__all__ = ["cache_dirs", "half_and_best", "proxy_config", "read_config", "run_proxy", "write_samples"]


def read_config(config: SelectConfig) -> TrainConfig:
    """How the real training reads the user's files (fields, format, seed): for reading them here."""
    return TrainConfig(
        task=config.task,
        model=config.model,
        layer=1,
        train=config.train,
        dev=config.dev,
        out=config.out,
        seed=config.seed,
        text_field=config.text_field,
        label_field=config.label_field,
        data_format=config.data_format,
    )


def cache_dirs(config: SelectConfig, layers: list[int]) -> dict[int, str | None]:
    """Where each cut's proxy cache goes: ``default_cache_dir`` under ``config.cache_root``, named as
    ``embrecycle train`` names caches; None without a root (training then picks the same name under
    ``$EMBRECYCLE_CACHE_HOME``)."""
    if not config.cache_root:
        return dict.fromkeys(layers)
    loaded = load_encoder(config.model, max(layers))  # one load: each cut's settings come from a view of it
    precision = resolve_hardware(config.device, config.precision).precision  # as the proxies' training resolves it
    dirs: dict[int, str | None] = {}
    for k in layers:
        view = LoadedEncoder(config.model, None, SplitEncoder(loaded.split.base, k), loaded.tokenizer)
        build = BuildConfig(model=config.model, layer=k, max_length=config.max_length, dtype=config.cache_dtype)
        dirs[k] = str(default_cache_dir(cache_settings_for(view, build, precision), root=config.cache_root))
    return dirs


def proxy_config(
    config: SelectConfig,
    layer: int,
    folder: Path,
    train: str,
    dev: str,
    cache: str | None = None,
    **overrides: Any,
) -> TrainConfig:
    """A proxy run at cut ``layer`` (0: the full fine-tuning reference) on sample files written by
    :func:`write_samples` (JSON lines / CoNLL with the default fields)."""
    reference = layer == 0
    base: dict[str, Any] = {
        "task": config.task,
        "model": config.model,
        "layer": max(layer, 1),
        "train": train,
        "dev": dev,
        "out": str(folder / f"k{layer}"),
        "cache": None if reference else cache,
        "baseline": "full-finetune" if reference else None,
        "epochs": config.proxy_epochs,
        "lr": config.reference_lr if reference else config.lr,  # None: the mode's default
        "head_lr": config.head_lr,
        "batch_size": config.proxy_batch_size,
        "seed": config.seed,
        "max_length": config.max_length,
        "cache_dtype": config.cache_dtype,
        "device": config.device,
        "precision": config.precision,
        "eval_every": half_way(len(read_examples(train)), config),
        "overwrite": True,  # proxies are scratch runs: a re-run (or the timing run) replaces them
    }
    return TrainConfig(**{**base, **overrides})


def run_proxy(
    config: SelectConfig, layer: int, folder: Path, train_file: str, dev_file: str, cache: str | None = None
) -> TrainResult:
    """Train the proxy at cut ``layer`` (0: the reference), quietly."""
    return train(proxy_config(config, layer, folder, train_file, dev_file, cache), progress=False)


def half_way(m: int, config: SelectConfig) -> int:
    """Evaluate half-way and at the end of a proxy (the stability check compares the two)."""
    steps = -(-m // config.proxy_batch_size) * config.proxy_epochs
    return max(1, -(-steps // 2))


def half_and_best(result: Any, metric: str) -> tuple[float, float]:
    """Best dev score up to the half-way evaluation, and over the whole proxy."""
    scores = [float(h[metric]) for h in result.history]
    return (max(scores[: max(1, len(scores) - 1)]), max(scores)) if scores else (0.0, 0.0)


def write_samples(
    config: SelectConfig, train_ex: list[Example], dev_ex: list[Example], m: int, d: int, folder: Path
) -> tuple[str, str, int]:
    """Seeded train/dev samples for the proxies, as files; dev examples whose class the train sample lacks
    are left out (a model cannot predict a label it never saw). Returns both paths and the dev count."""
    rng = random.Random(config.seed)
    train_s = [train_ex[i] for i in sorted(rng.sample(range(len(train_ex)), m))]
    if config.task == "classification":
        known = {str(e.label) for e in train_s}
        dev_ex = [e for e in dev_ex if str(e.label) in known]
    dev_s = [dev_ex[i] for i in sorted(rng.sample(range(len(dev_ex)), min(d, len(dev_ex))))]
    if dev_ex and not dev_s:
        raise InputDataError("no dev example has a label of the training sample; raise --sample.")
    ext = "jsonl" if config.task == "classification" else "conll"
    train_path = write_examples(train_s, folder / f"train.{ext}")
    dev_path = write_examples(dev_s, folder / f"dev.{ext}")
    return str(train_path), str(dev_path), len(dev_s)
