"""Prediction over a corpus of many files, spread over a Ray Data actor pool (``predict --engine ray``).

The corpus is a directory or a glob of input shards (JSON lines, CSV/TSV, text, CoNLL or Parquet). Each shard
is one Ray Data row; a pool of actors, each holding the task set once (the lower layers and every task's upper
layers, as :class:`~embrecycle.TaskSet` shares them), reads a shard, predicts it with one shared pass per
document (cached states where the cache has them) and writes one output shard per task:
``OUT/TASK/SHARD_NAME.jsonl``, the lines ``predict`` writes for that file. Outputs are written atomically,
so a shard's output either exists complete or not at all:

- a worker that dies loses its shard in flight; Ray restarts the actor and retries the shard, which rewrites
  the same files (Ray Data's actor-pool defaults: ``max_restarts=-1``, ``max_task_retries=-1``);
- a driver that dies loses nothing written: a re-run skips shards whose every task output exists.

Ray is an optional dependency: ``pip install 'embrecycle[ray]'``.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .cache.ray_engine import RayPool, import_ray
from .data.readers import detect_format
from .errors import ConfigError, InputDataError
from .files import write_text_atomic
from .multitask import TaskSet, check_shareable
from .progress import progress_bar
from .run_record import read_run_record

__all__ = ["BatchPredictSummary", "PredictActor", "input_shards", "predict_files_ray", "prediction_lines"]

SHARD_SUFFIXES = (".jsonl", ".json", ".ndjson", ".csv", ".tsv", ".txt", ".conll", ".parquet", ".pq")


@dataclass
class BatchPredictSummary:
    """What a corpus prediction did: shards predicted and skipped, documents, cache hits and misses."""

    shards: int = 0
    skipped: int = 0
    documents: int = 0
    hits: int = 0
    misses: int = 0
    tasks: list[str] = field(default_factory=list)


def input_shards(data: str) -> list[Path]:
    """The input files of ``data``: a file, a directory's files of a known format, or a glob (sorted).

    Raises:
        InputDataError: nothing matches, or two shards would write the same output name.
    """
    p = Path(data)
    if p.is_dir():
        found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in SHARD_SUFFIXES)
    elif p.is_file():
        found = [p]
    else:
        found = sorted(Path(f) for f in glob.glob(data, recursive=True) if Path(f).is_file())
    if not found:
        raise InputDataError(
            f"--data {data!r} matches no input file: give a file, a directory of {', '.join(SHARD_SUFFIXES)} "
            "files, or a glob such as 'corpus/*.jsonl' (quoted)."
        )
    names: dict[str, Path] = {}
    for f in found:
        other = names.setdefault(output_name(f), f)
        if other != f:
            raise InputDataError(
                f"input shards {other} and {f} would both write {output_name(f)}: rename one, or predict the "
                "directories separately."
            )
    return found


def output_name(shard: Path) -> str:
    """The output file of one input shard (per task): its name with ``.jsonl`` in place of its extension."""
    return f"{shard.stem}.jsonl"


def prediction_lines(sources: Sequence[str], items: Sequence[dict[str, Any] | None]) -> str:
    """The JSON lines ``predict`` writes: per document its source and prediction (or why it was skipped)."""
    lines = (
        json.dumps({"source": s, **(item or {"skipped": "empty document"})})
        for s, item in zip(sources, items, strict=True)
    )
    return "".join(f"{line}\n" for line in lines)


def predict_files_ray(
    runs: Sequence[str],
    data: str,
    out: str | os.PathLike[str],
    options: RayPool | None = None,
    cache: str | None = None,
    text_field: str = "text",
    data_format: str | None = None,
    batch_size: int = 64,
    device: str = "auto",
    precision: str = "auto",
    overwrite: bool = False,
    progress: bool = True,
    actor_class: type | None = None,
) -> BatchPredictSummary:
    """Predict every shard of ``data`` with ``runs`` on a Ray Data actor pool (see the module docstring).

    Args:
        runs: Run directories (one base model and cut), visible to every worker at the same paths.
        data: A file, a directory of input shards, or a glob.
        out: Directory receiving ``TASK/SHARD.jsonl`` per task and shard.
        options: The Ray engine's settings (address, workers, CPUs/GPUs per worker).
        cache: Cache to look documents up in (default: the runs' training cache).
        overwrite: Predict shards whose outputs exist again (default: skip them, which resumes a killed run).
        actor_class: A subclass of :class:`PredictActor` (for tests).

    Raises:
        ConfigError: runs that cannot share a pass, an unusable ``out``.
        InputDataError: no input shard, an unreadable shard (the run stops; finished shards stay).
    """
    opts = options or RayPool()
    shards = input_shards(data)
    for s in shards:
        detect_format(s, data_format)  # an unknown extension fails here, before any worker starts
    # the runs' records (not their weights) checked before any worker starts
    check_shareable([(Path(r), read_run_record(r)) for r in runs], one_input_kind=True)
    names = [Path(r).name for r in runs]
    root = Path(out)
    if root.exists() and not root.is_dir():
        raise ConfigError(f"--out {root} is a file: --out names a directory, which receives TASK/SHARD.jsonl.")
    for name in names:
        (root / name).mkdir(parents=True, exist_ok=True)
    todo = [s for s in shards if overwrite or not all((root / n / output_name(s)).exists() for n in names)]
    summary = BatchPredictSummary(skipped=len(shards) - len(todo), tasks=names)
    if not todo:
        return summary
    ray = import_ray()
    if not ray.is_initialized():
        ray.init(address=opts.address, include_dashboard=False, log_to_driver=False)
    rows = [{"shard": str(s.resolve())} for s in todo]
    ds = ray.data.from_items(rows, override_num_blocks=len(rows))
    results = ds.map_batches(
        actor_class or PredictActor,
        batch_size=1,
        concurrency=opts.num_workers,
        num_cpus=opts.cpus_per_worker,
        num_gpus=opts.gpus_per_worker or None,
        fn_constructor_kwargs={
            "runs": [str(Path(r).resolve()) for r in runs],
            "out": str(root.resolve()),
            "cache": cache,
            "text_field": text_field,
            "data_format": data_format,
            "batch_size": batch_size,
            "device": device if opts.gpus_per_worker else "cpu",
            "precision": precision,
        },
    )
    bar = progress_bar(len(todo), "predict (ray)", "shard", enabled=progress)
    for row in results.iter_rows():
        summary.shards += 1
        summary.documents += int(row["documents"])
        summary.hits += int(row["hits"])
        summary.misses += int(row["misses"])
        bar.update(1)
    bar.close()
    return summary


class PredictActor:
    """A Ray Data actor: holds the task set once and predicts whole input shards, writing one output per task."""

    def __init__(
        self,
        runs: list[str],
        out: str,
        cache: str | None,
        text_field: str,
        data_format: str | None,
        batch_size: int,
        device: str,
        precision: str,
    ) -> None:
        self.tasks = TaskSet.load(runs, device, precision)
        self.out = Path(out)
        self.cache = self.tasks.models[0].open_cache(cache)
        self.text_field, self.data_format, self.batch_size = text_field, data_format, batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        stats = [self.process(Path(str(s))) for s in batch["shard"]]
        return {k: np.array([s[k] for s in stats]) for k in ("shard", "documents", "hits", "misses")}

    def process(self, shard: Path) -> dict[str, Any]:
        """Predict one shard and write ``OUT/TASK/SHARD.jsonl`` for every task (each written atomically)."""
        first = self.tasks.models[0]
        examples = first.read(shard, self.data_format, text_field=self.text_field, label_field=None)
        preds = self.tasks.predict([e.doc for e in examples], cache=self.cache, batch_size=self.batch_size)
        sources = [e.source for e in examples]
        for name, p in preds.items():
            write_text_atomic(self.out / name / output_name(shard), prediction_lines(sources, p.items))
        p = next(iter(preds.values()))
        return {"shard": str(shard), "documents": len(examples), "hits": p.hits, "misses": p.misses}
