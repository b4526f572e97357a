"""The embedding-recycling paper's datasets, as the benchmark scripts and the Makefile use them.

sci-cite and chemprot (classification, macro-F1) and bc5cdr (NER, entity F1), each a folder of
``train/dev/test`` files under ``$EMBRECYCLE_PAPER_DATA`` (default ``../shared/data`` beside the
repository, where CI has them).

Printed as ``embrecycle bench`` options, for the Makefile::

    python benchmarks/paper_datasets.py                   # --dataset sci-cite=classification:... (all three)
    python benchmarks/paper_datasets.py sci-cite bc5cdr   # only these
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from embrecycle.bench import BenchConfig, BenchDataset

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("EMBRECYCLE_PAPER_DATA", ROOT.parent / "shared" / "data"))
"""Folder holding one sub-folder per paper dataset."""

TASKS = {"sci-cite": "classification", "chemprot": "classification", "bc5cdr": "ner"}
"""Each paper dataset's task (its metric follows: macro-F1 for classification, entity F1 for NER)."""


def spec(name: str, data_dir: Path | None = None) -> str:
    """The ``--dataset`` value of paper dataset ``name``: ``NAME=TASK:DIR`` (DIR relative to the working directory)."""
    if name not in TASKS:
        raise SystemExit(f"error: {name!r} is not a paper dataset; choose from {sorted(TASKS)}")
    return f"{name}={TASKS[name]}:{os.path.relpath((data_dir or DATA_DIR) / name)}"


def dataset(name: str, data_dir: Path | None = None) -> BenchDataset:
    """Paper dataset ``name`` (its folder must hold the train/dev/test files)."""
    return BenchDataset.parse(spec(name, data_dir))


def require(data_dir: Path | None = None) -> Path:
    """The data folder, or exit with where it was looked for."""
    folder = data_dir or DATA_DIR
    if not folder.is_dir():
        raise SystemExit(
            f"error: the paper datasets are missing: {folder} (expected ../shared/data next to the repository, "
            "or set EMBRECYCLE_PAPER_DATA)"
        )
    return folder


def bench_config(saved: dict[str, Any], data_dir: Path | None = None) -> BenchConfig:
    """The settings of a results file's run, with its datasets read from ``data_dir``.

    Reads both forms of saved settings: dataset names and a ``data_dir`` (results written before
    datasets were given as ``NAME=TASK:DIR``), and the ``NAME=TASK:...`` forms themselves (re-pointed
    at ``data_dir`` when they name a paper dataset).
    """
    values = {k: v for k, v in saved.items() if k != "data_dir"}
    names = [str(d).partition("=")[0] for d in values.get("datasets", [])]
    given = values.get("datasets", [])
    values["datasets"] = [spec(n, data_dir) if n in TASKS else d for n, d in zip(names, given, strict=True)]
    return BenchConfig.from_dict(values)


def main() -> None:
    parser = argparse.ArgumentParser(description="Print the paper datasets as `embrecycle bench --dataset` options.")
    parser.add_argument("names", nargs="*", default=list(TASKS), help=f"datasets (default: all of {list(TASKS)})")
    args = parser.parse_args()
    print(" ".join(f"--dataset {spec(n)}" for n in args.names))


if __name__ == "__main__":
    main()
