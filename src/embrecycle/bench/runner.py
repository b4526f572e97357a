"""Run the benchmark: every (model, dataset, method, seed) trained and measured in one process.

Per training run: dev and test scores, training throughput and wall time, peak
memory (resident set, sampled), trainable parameters, run size, and inference
throughput on cached documents (the dev set, in the cache) and on new ones
(the test set, not in it). Per cache (model, dataset, layer): build time,
bytes per token and in total, read throughput, and the share of the training
steps spent reading it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..cache.store import Cache
from ..data.readers import Example, read_examples
from ..data.writers import serialise_examples
from ..encoder import load_config
from ..errors import ConfigError, InputDataError
from ..files import write_text_atomic
from ..predict import load
from ..tokenization import is_empty
from ..training import TrainConfig, read_split, train
from .config import METHODS, SPLITS, BenchConfig, BenchDataset, Method, lr_grid
from .report import chosen_lrs
from .results import cpu_model, environment, write_results

__all__ = ["BenchData", "environment", "prepare_data", "resolve_model", "run_bench", "write_results"]

log = logging.getLogger(__name__)


def resolve_model(name: str) -> str:
    """An offline model's directory by its short name, else the name itself (a path or hub id)."""
    from .. import offline_models

    if name == "minilm-l6":
        return offline_models.minilm_l6_path()
    if name == "mpnet-base":
        return offline_models.mpnet_base_path()
    return name


RESULT_SETTINGS = ("epochs", "batch_size", "max_length", "precision", "device")
"""Settings a kept run's numbers depend on (with the dataset files and subsets): a change invalidates it."""


def run_bench(config: BenchConfig, progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every measurement of ``config``; returns ``{"environment", "config", "rows"}`` (also written as JSON).

    Each finished run is kept as ``<out>/runs/<model>/<dataset>/<method>-lr<lr>-seed<seed>.json`` (and each
    cache's row beside them); a re-run with the same settings reuses them and trains only what is missing, so an
    interrupted benchmark resumes where it stopped. Caches and data subsets live under ``<out>/work`` (not for
    version control: it holds a ``.gitignore``). With ``lr_steps``, every method trains on the first seed at each
    rate of :func:`~embrecycle.bench.config.lr_grid` and on the later seeds at the best of them by dev score.
    """
    datasets = config.bench_datasets()
    for ds in datasets:
        missing = [str(ds.path(s)) for s in SPLITS if not ds.path(s).is_file()]
        if missing:
            raise InputDataError(
                f"dataset {ds.name!r}: splits not found: no file {missing}; check its --dataset "
                f"{ds.name}={ds.task}:... paths."
            )
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    out = Path(config.out)
    partial = out / ("bench_quick.partial.json" if config.quick else "bench.partial.json")
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    (work / ".gitignore").write_text("# caches and data subsets of `embrecycle bench`: large, rebuilt on demand\n*\n")
    with tempfile.TemporaryDirectory(prefix="embrecycle-bench-") as tmp:
        for model_name in config.models:
            model = resolve_model(model_name)
            n_layers = int(load_config(model).num_hidden_layers)
            for ds in datasets:
                data = prepare_data(config, work / "data" / _slug(model_name), ds)
                rows.append({"kind": "data", "model": model_name, **data.counts})
                kept = _Kept(out / "runs" / _slug(model_name) / ds.name, _settings(config, ds, data), config.overwrite)
                warmed = False
                # Seeds outside, methods inside: a slow spell of the shared machine hits every method alike.
                for i, seed in enumerate(config.seeds):
                    for method_name in config.methods:
                        method = METHODS[method_name]
                        layer = round(method.fraction * n_layers)
                        default = method.default_lr(ds.task)
                        lrs = lr_grid(default, config.lr_steps) if i == 0 else [kept.best_lr(method.name, default)]
                        for lr in lrs:
                            name = f"{method.name}-lr{lr:g}-seed{seed}"
                            row = kept.row(name)
                            if row is None:
                                if not warmed:
                                    _warm_up(config, tmp, model, ds, data)
                                    warmed = True
                                cache_dir = work / "caches" / f"{_slug(model_name)}-{ds.name}-{layer}"
                                if method.recycles and not kept.has(f"cache-k{layer}"):
                                    shutil.rmtree(cache_dir, ignore_errors=True)  # built by a killed run: untimed
                                row = _train_run(
                                    config,
                                    tmp,
                                    model_name,
                                    model,
                                    n_layers,
                                    ds,
                                    data,
                                    method,
                                    layer,
                                    seed,
                                    lr,
                                    cache_dir if method.recycles else None,
                                )
                                if config.memory and not kept.measured_memory(method.name):
                                    row["peak_memory_bytes"], row["idle_memory_bytes"] = _peak_memory(
                                        config, row["config"]
                                    )
                                kept.save(name, row)
                                if row["cache"] and not kept.has(f"cache-k{layer}"):
                                    kept.save(f"cache-k{layer}", _cache_row(row, config))
                                verb = "trained"
                            else:
                                verb = "kept"
                            progress(
                                f"[{time.perf_counter() - started:6.0f}s] {model_name} {ds.name} {method_name} "
                                f"lr {lr:g} seed {seed} ({verb}): dev {row['dev_score']:.4f} "
                                f"test {row['test_score']:.4f}, {row['train_examples_per_second']:.1f} ex/s"
                            )
                            _write_partial(partial, config, rows + kept.rows(), started)
                rows.extend(kept.rows())
    partial.unlink(missing_ok=True)
    return _result(config, rows, started)


def _slug(name: str) -> str:
    """A model name or path as one file-name component."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(name).name or name)


def _settings(config: BenchConfig, ds: BenchDataset, data: BenchData) -> dict[str, Any]:
    """What the numbers of one (model, dataset) depend on besides method, rate and seed."""
    return {
        **{k: getattr(config, k) for k in RESULT_SETTINGS},
        "task": ds.task,
        "files": [str(ds.path(s)) for s in SPLITS],
        "subsets": data.fingerprint,
        "counts": {k: data.counts[k] for k in SPLITS},
    }


class _Kept:
    """The finished runs of one (model, dataset): one JSON file each, and the settings they were made with."""

    def __init__(self, folder: Path, settings: dict[str, Any], overwrite: bool) -> None:
        self.folder = folder
        marker = folder / "settings.json"
        if marker.is_file():
            before = json.loads(marker.read_text(encoding="utf-8"))
            changed = sorted(k for k in set(before) | set(settings) if before.get(k) != settings.get(k))
            if changed and not overwrite:
                raise ConfigError(
                    f"{folder} keeps runs made with other settings ({', '.join(changed)} differ: before "
                    f"{ {k: before.get(k) for k in changed} }, now { {k: settings.get(k) for k in changed} }); "
                    "rerun with their settings to resume, give another --out, or pass --overwrite to discard them."
                )
            if changed:
                shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if not marker.is_file():
            write_text_atomic(marker, json.dumps(settings, indent=2) + "\n")
        self._rows: dict[str, dict[str, Any]] = {}
        for path in sorted(folder.glob("*.json")):
            if path.name != "settings.json":
                self._rows[path.stem] = json.loads(path.read_text(encoding="utf-8"))

    def has(self, name: str) -> bool:
        return name in self._rows

    def row(self, name: str) -> dict[str, Any] | None:
        return self._rows.get(name)

    def save(self, name: str, row: dict[str, Any]) -> None:
        write_text_atomic(self.folder / f"{name}.json", json.dumps(row, indent=2) + "\n")
        self._rows[name] = row

    def rows(self) -> list[dict[str, Any]]:
        return list(self._rows.values())

    def best_lr(self, method: str, default: float) -> float:
        """The rate of the method's best first-seed run by dev score (the default when none is kept)."""
        return next((lr for (_, _, m), lr in chosen_lrs(self.rows()).items() if m == method), default)

    def measured_memory(self, method: str) -> bool:
        return any(r["kind"] == "train" and r["method"] == method and r["peak_memory_bytes"] for r in self.rows())


@dataclass
class BenchData:
    """One dataset's seeded subsets, the same for every method and seed."""

    train: str
    dev: str
    test: list[Example]
    counts: dict[str, Any]
    fingerprint: str = ""
    """SHA-256 of the three subsets as written (a changed file or subset changes it)."""


def prepare_data(config: BenchConfig, folder: Path, ds: BenchDataset) -> BenchData:
    """Seeded subsets of a dataset's splits, written as files for training.

    Every method and seed trains on the same subset (seeds change initialisation and order).
    Dev and test examples whose class never occurs in the training subset are left out (a
    model cannot predict a label it was not trained on) and counted in the results.
    """
    rng = np.random.default_rng(0)
    ext = "jsonl" if ds.task == "classification" else "conll"  # what the subsets are written as

    def subset(split: str, limit: int | None, known: set[str] | None) -> tuple[list[Example], int]:
        examples = [e for e in read_examples(ds.path(split)) if not is_empty(e.doc)]
        kept = [e for e in examples if known is None or e.label in known]
        left_out = len(examples) - len(kept)
        if limit and len(kept) > limit:
            kept = [kept[i] for i in sorted(rng.choice(len(kept), limit, replace=False))]
        return kept, left_out

    train_ex, _ = subset("train", config.limit(ds.name, "train"), None)
    known = {str(e.label) for e in train_ex} if ds.task == "classification" else None
    dev_ex, dev_dropped = subset("dev", config.limit(ds.name, "dev"), known)
    test_ex, test_dropped = subset("test", config.limit(ds.name, "test"), known)
    out = folder / ds.name
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, examples in (("train", train_ex), ("dev", dev_ex)):
        paths[split] = out / f"{split}.{ext}"
        paths[split].write_text(serialise_examples(examples, ext), encoding="utf-8")
    counts = {
        "dataset": ds.name,
        "train": len(train_ex),
        "dev": len(dev_ex),
        "test": len(test_ex),
        "labels": len(known) if known is not None else None,
        "dev_left_out": dev_dropped,
        "test_left_out": test_dropped,
    }
    digest = hashlib.sha256()
    for examples in (train_ex, dev_ex, test_ex):
        digest.update(serialise_examples(examples, ext).encode("utf-8"))
    return BenchData(str(paths["train"]), str(paths["dev"]), test_ex, counts, digest.hexdigest())


def _result(config: BenchConfig, rows: list[dict[str, Any]], started: float) -> dict[str, Any]:
    """The results file's content: machine, settings, rows, and the time taken so far."""
    datasets = [asdict(d) for d in config.bench_datasets()]
    result: dict[str, Any] = {"environment": environment(), "config": asdict(config), "datasets": datasets}
    result["rows"] = rows
    result["environment"]["bench_seconds"] = round(time.perf_counter() - started, 1)
    return result


def _write_partial(path: Path, config: BenchConfig, rows: list[dict[str, Any]], started: float) -> None:
    """Rows so far, so that an interrupted benchmark keeps what it measured (``--from-results`` renders it)."""
    result = _result(config, rows, started)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


def _warm_up(config: BenchConfig, tmp: str, model: str, ds: BenchDataset, data: BenchData) -> None:
    """An unrecorded short full fine-tuning run, so that no measured run pays one-off start-up costs."""
    cfg = TrainConfig(
        task=ds.task,
        model=model,
        layer=1,
        train=data.train,
        dev=data.train,  # the same seeded sample as the training one: no label it has not seen
        out=str(Path(tmp) / f"warm-up-{ds.name}-{Path(model).name}"),
        baseline="full-finetune",
        epochs=1,
        batch_size=config.batch_size,
        max_length=config.max_length,
        train_limit=2 * config.batch_size,
        dev_limit=2 * config.batch_size,
        device=config.device,
        precision=config.precision,
    )
    # its dev set is its training set on purpose (no overlap warning), and 64 examples learn little (no
    # learned-nothing warning): neither says anything about a measured run
    quiet = [logging.getLogger(f"embrecycle.training.{name}") for name in ("data", "loop")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.ERROR)
    try:
        train(cfg, progress=False)
    finally:
        for logger, level in zip(quiet, levels, strict=True):
            logger.setLevel(level)


def _peak_memory(config: BenchConfig, cfg: dict[str, Any]) -> tuple[int, int]:
    """Peak resident set of a fresh process that trains this configuration for two batches, and its level
    just before that training (libraries loaded, nothing else held): ``(peak, idle)`` bytes.

    Measured in a child process: in the benchmark's own process, memory freed by one run is
    reused by the next, so a resident-set reading there says more about run order than about
    the method.
    """
    short = {
        **cfg,
        "out": cfg["out"] + "-memory",
        "cache": cfg["out"] + "-memory-cache" if cfg["cache"] else None,
        "epochs": 1,
        "dev": cfg["train"],  # the same seeded sample as the training one: no label it has not seen
        "train_limit": 2 * config.batch_size,
        "dev_limit": 2 * config.batch_size,
    }
    child = subprocess.run(
        [sys.executable, "-m", "embrecycle.bench.memory"],
        input=json.dumps(short),
        capture_output=True,
        text=True,
        check=False,
    )
    if child.returncode != 0:
        log.warning("peak-memory child failed (%s): %s", child.returncode, child.stderr[-2000:])
        return 0, 0
    measured = json.loads(child.stdout.strip().splitlines()[-1])
    return int(measured["peak_rss_bytes"]), int(measured["baseline_rss_bytes"])


def _train_run(
    config: BenchConfig,
    tmp: str,
    model_name: str,
    model: str,
    n_layers: int,
    ds: BenchDataset,
    data: BenchData,
    method: Method,
    layer: int,
    seed: int,
    lr: float,
    cache: Path | None,
) -> dict[str, Any]:
    started = time.perf_counter()
    run_dir = Path(tmp) / f"{_slug(model_name)}-{ds.name}-{method.name}-{lr:g}-{seed}"
    cfg = TrainConfig(
        task=ds.task,
        model=model,
        layer=layer if method.recycles else max(layer, 1),
        train=data.train,
        dev=data.dev,
        out=str(run_dir),
        cache=str(cache) if cache is not None else None,
        upper=method.upper,
        baseline=method.baseline,
        device=config.device,
        precision=config.precision,
        epochs=config.epochs,
        lr=lr,
        batch_size=config.batch_size,
        seed=seed,
        max_length=config.max_length,
    )
    result = train(cfg, progress=False)
    task_model = load(run_dir, config.device, config.precision)
    dev_docs = [e.doc for e in read_split(cfg.dev, cfg, cfg.task, cfg.dev_limit, "dev")]  # in the cache
    t0 = time.perf_counter()
    cached = task_model.predict(dev_docs)
    cached_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    scores = task_model.evaluate(data.test)  # test documents are not in the cache: the lower layers run
    new_s = time.perf_counter() - t0
    metric = ds.metric
    return {
        "kind": "train",
        "model": model_name,
        "num_layers": n_layers,
        "dataset": ds.name,
        "task": ds.task,
        "metric": metric,
        "method": method.name,
        "upper": method.upper,
        "baseline": method.baseline,
        "layer": layer if method.recycles else 0,
        "seed": seed,
        "lr": cfg.lr,
        "head_lr": result.head_lr,
        "default_lr": method.default_lr(ds.task),
        "device": result.device,
        "precision": result.precision,
        "threads": result.threads,
        "cpu": cpu_model(),
        "dev_score": result.best[metric],
        "dev_constant_score": result.constant_score,
        "dev_chance_score": result.chance_score,
        "learned_nothing": result.learned_nothing,
        "test_score": scores[metric],
        "train_seconds": result.train_seconds,
        "epochs": len(result.epoch_seconds),
        "train_examples": result.train_examples,
        "train_examples_per_second": result.examples_per_second,
        "read_seconds": result.read_seconds,
        "read_fraction": result.read_seconds / result.train_seconds if result.train_seconds else 0.0,
        "cache_build_seconds": result.cache_build_seconds,
        "cache": result.cache,
        "peak_memory_bytes": 0,
        "config": asdict(cfg),
        "trainable_parameters": result.trainable_parameters,
        "run_weights_bytes": result.weights_bytes,
        "infer_cached_docs": len(dev_docs),
        "infer_cached_hits": cached.hits,
        "infer_cached_docs_per_second": len(dev_docs) / cached_s if cached_s else 0.0,
        "infer_new_docs": scores["documents"],
        "infer_new_misses": scores["cache_misses"],
        "infer_new_docs_per_second": scores["documents"] / new_s if new_s else 0.0,
        "run_wall_seconds": time.perf_counter() - started,
    }


def _cache_row(train_row: dict[str, Any], config: BenchConfig, batches: int = 30) -> dict[str, Any]:
    """Storage and read throughput of the cache a recycling run built."""
    cache = Cache.open(train_row["cache"])
    stats = cache.stats()
    rng = np.random.default_rng(0)
    n = len(cache)
    size = min(config.batch_size, n)
    t0 = time.perf_counter()
    docs = tokens = 0
    for _ in range(batches):
        idx = rng.choice(n, size, replace=False)
        cache.read_batch(idx)
        docs += size
        tokens += int(cache.lengths[idx].sum())
    dt = time.perf_counter() - t0
    return {
        "kind": "cache",
        "model": train_row["model"],
        "dataset": train_row["dataset"],
        "layer": train_row["layer"],
        "num_layers": train_row["num_layers"],
        "build_seconds": train_row["cache_build_seconds"],
        "documents": stats["documents"],
        "tokens": stats["tokens"],
        "bytes": stats["bytes"],
        "bytes_per_token": stats["bytes_per_token"],
        "read_docs_per_second": docs / dt,
        "read_tokens_per_second": tokens / dt,
        "read_fraction_of_training": train_row["read_fraction"],
    }
