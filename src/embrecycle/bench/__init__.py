"""The benchmark behind `embrecycle bench`: the paper's comparison on your datasets and machine, every overhead counted.

The pieces: :mod:`.config` (settings, datasets, methods), :mod:`.runner` (the measurements),
:mod:`.report` (the Markdown report, plots, README table), :mod:`.memory` (peak memory in a fresh
process), and the parts the scripts under ``benchmarks/`` share: :mod:`.results` (machine info,
results files), :mod:`.tables` (Markdown tables, README blocks) and :mod:`.timing` (timers).

Example:
    >>> from embrecycle.bench import BenchConfig, run_and_report
    >>> config = BenchConfig.quick_config(datasets=["reviews=classification:data/reviews"], out="/tmp/bench")
    >>> run_and_report(config)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .config import METHODS, MODELS, BenchConfig, BenchDataset
from .report import headline_table, merge_results, readme_block, render_report, summarize, update_readme
from .results import environment, write_results
from .runner import run_bench

__all__ = [
    "METHODS",
    "MODELS",
    "BenchConfig",
    "BenchDataset",
    "environment",
    "headline_table",
    "merge_results",
    "readme_block",
    "render_report",
    "report_from_results",
    "run_and_report",
    "run_bench",
    "summarize",
    "update_readme",
    "write_results",
]


def run_and_report(config: BenchConfig, readme: Path | None = None, progress: Any = print) -> dict[str, Path]:
    """Run the benchmark and write ``<out>/bench[_quick].{json,md}`` plus plots; optionally refresh the README table.

    Returns the paths written (``results``, ``report``).
    """
    out = Path(config.out)
    stem = "bench_quick" if config.quick else "bench"
    result = run_bench(config, progress=progress)
    results = write_results(result, out, stem)
    report = out / f"{stem}.md"
    report.write_text(render_report(result, out, stem), encoding="utf-8")
    if readme is not None and not config.quick:
        link = os.path.relpath(report, readme.parent)
        update_readme(readme, readme_block(result["rows"]), link)
    return {"results": results, "report": report}


def report_from_results(results: Path | list[Path], readme: Path | None = None, out: Path | None = None) -> Path:
    """Re-render the report (and README table) of earlier runs from their results files.

    Several files (say one run per model, each with its own subsets) are merged into one
    report, written as ``<out>/bench.{json,md}`` (``out``: the first file's folder).
    """
    paths = [Path(results)] if isinstance(results, (str, Path)) else [Path(p) for p in results]
    loaded = [json.loads(p.read_text(encoding="utf-8")) for p in paths]
    if len(loaded) == 1 and out is None:
        result, stem, folder = loaded[0], paths[0].stem, paths[0].parent
    else:  # merged, or gathered into another folder: written there as bench.json
        result, stem, folder = merge_results(loaded), "bench", out or paths[0].parent
        write_results(result, Path(folder), stem)
    report = Path(folder) / f"{stem}.md"
    report.write_text(render_report(result, Path(folder), stem), encoding="utf-8")
    parts = result.get("parts") or [result]
    if readme is not None and not any(p["config"]["quick"] for p in parts):
        update_readme(readme, readme_block(result["rows"]), os.path.relpath(report, readme.parent))
    return report
