"""How much fine-tuning accuracy survives 8-bit and 4-bit caches? Bytes, conversion time, read cost, retention.

Per model and dataset (sci-cite and bc5cdr, the benchmark's subsets: 2,000 training / 1,000 dev / 1,000 test
examples, seeded), cut at k = N/2:

1. one float16 cache of the training, dev and test documents (its build timed);
2. every quantised dtype converted from it (``cache convert``, timed): int8 per token and per 64 channels,
   int4 per 64 and per 32 channels;
3. per dtype and seed (1, 2, 3): recycling with the upper layers trained (the benchmark's ``recycle-50``, at its
   chosen learning rate, 3 epochs) on that cache, scored on the test documents read from the same cache, so
   the quantised states are what the model sees in training and in prediction;
4. reading: a random batch of 32 documents read and dequantised, as a share of one training step;
5. outliers: each channel's largest absolute value over the cached tokens (the channels per-token scales fail on).

Retention of each dtype is its mean test score over float16's on the same seeds, with a 90% interval over them
(``embrecycle.bench.report.retention_interval``). Targets (issue 21): int8 at most 52% of float16's bytes with
retention within 0.3 points of float16 (or the seed spread, whichever is larger); int4 at most 27% and within 1
point; dequantisation under 5% of a training step.

    .venv/bin/python benchmarks/quantised_cache.py [--model minilm-l6] [--datasets sci-cite,bc5cdr]
    .venv/bin/python benchmarks/quantised_cache.py --report

Resumable: rows are kept per finished run in ``benchmarks/results/quantised_cache/runs.jsonl`` (and caches under
``benchmarks/results/quantised_cache/work``, not for version control). Report: ``quantised_cache.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import paper_datasets  # noqa: E402
from embrecycle import BuildConfig, build_cache, convert_cache, load, open_cache  # noqa: E402
from embrecycle.bench.config import BenchConfig  # noqa: E402
from embrecycle.bench.report import retention_interval  # noqa: E402
from embrecycle.bench.results import cpu_model, environment  # noqa: E402
from embrecycle.bench.runner import prepare_data, resolve_model  # noqa: E402
from embrecycle.cache.codecs import CODECS  # noqa: E402
from embrecycle.data.readers import read_examples  # noqa: E402
from embrecycle.encoder import load_config  # noqa: E402
from embrecycle.modes import MODES  # noqa: E402
from embrecycle.training import TrainConfig, train  # noqa: E402
from kept_rows import KeptRows  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
OUT = RESULTS / "quantised_cache"
RUNS = KeptRows(OUT / "runs.jsonl")
DTYPES = ["float16", "int8-token", "int8-g64", "int4-g64", "int4-g32"]
SEEDS = [1, 2, 3]
TRAIN_LIMIT, DEV_LIMIT, TEST_LIMIT = 2000, 1000, 1000
EPOCHS = 3


def _chosen_lr(model: str, dataset: str, task: str) -> float:
    """The realistic benchmark's learning rate for recycle-50 (its best on seed 1), else the mode's default."""
    from embrecycle.bench.report import chosen_lrs

    folder = RESULTS / "bench-runs" / model / "runs" / model / dataset
    rows = [json.loads(p.read_text()) for p in folder.glob("recycle-50-*seed*.json")]
    return chosen_lrs(rows).get((model, dataset, "recycle-50"), MODES["full"].lr.for_task(task))


def measure(model_name: str, datasets: list[str], precision: str, dtypes: list[str] | None = None) -> None:
    """Build, convert, train and time; ``dtypes``: the stored dtypes trained (all by default; float16, the
    reference, is always built, and the training runs go in the order given)."""
    trained = dtypes or DTYPES
    unknown = sorted(set(trained) - set(DTYPES))
    if unknown:
        raise SystemExit(f"unknown --dtypes {unknown}: choose from {DTYPES}")
    work = OUT / "work"
    work.mkdir(parents=True, exist_ok=True)
    (work / ".gitignore").write_text("*\n")
    done = {(r["model"], r["dataset"], r["kind"], r.get("dtype"), r.get("seed")) for r in RUNS.rows()}
    model = resolve_model(model_name)
    k = int(load_config(model).num_hidden_layers) // 2
    for name in datasets:
        config = BenchConfig(
            models=[model_name],
            datasets=[paper_datasets.spec(name)],
            train_limit=TRAIN_LIMIT,
            dev_limit=DEV_LIMIT,
            test_limit=TEST_LIMIT,
        )
        (ds,) = config.bench_datasets()
        data = prepare_data(config, work / "data" / model_name, ds)
        ext = "jsonl" if ds.task == "classification" else "conll"
        test_file = work / "data" / model_name / ds.name / f"test.{ext}"
        from embrecycle.data.writers import serialise_examples

        test_file.write_text(serialise_examples(data.test, ext), encoding="utf-8")
        docs = [e.doc for f in (data.train, data.dev, str(test_file)) for e in read_examples(f)]
        caches = {dt: work / f"{model_name}-{name}-k{k}-{dt}" for dt in DTYPES}
        key = (model_name, name, "cache", "float16", None)
        if key not in done or not (caches["float16"] / "manifest.json").exists():
            build = BuildConfig(model=model, layer=k, max_length=128, dtype="float16", precision=precision)
            t0 = time.perf_counter()
            summary = build_cache(docs, caches["float16"], build, progress=False)
            seconds = time.perf_counter() - t0
            RUNS.keep({"model": model_name, "dataset": name, "kind": "cache", "dtype": "float16", "seconds": seconds,
                   "documents": summary.computed + summary.reused, **_sizes(caches["float16"])})  # fmt: skip
            RUNS.keep({"model": model_name, "dataset": name, "kind": "outliers", **_outliers(caches["float16"])})
        for dt in [d for d in DTYPES[1:] if d in trained]:
            if (model_name, name, "cache", dt, None) in done and (caches[dt] / "manifest.json").exists():
                continue
            conv = convert_cache(caches["float16"], caches[dt], dt, progress=False)
            RUNS.keep({"model": model_name, "dataset": name, "kind": "cache", "dtype": dt, "seconds": conv.seconds,
                   "documents": conv.documents, **_sizes(caches[dt])})  # fmt: skip
        lr = _chosen_lr(model_name, name, ds.task)
        for seed in SEEDS:
            for dt in trained:
                if (model_name, name, "train", dt, seed) in done:
                    continue
                run = work / "runs" / f"{model_name}-{name}-{dt}-{seed}"
                cfg = TrainConfig(task=ds.task, model=model, layer=k, train=data.train, dev=data.dev, out=str(run),
                                  cache=str(caches[dt]), cache_dtype=dt, epochs=EPOCHS, lr=lr, seed=seed,
                                  max_length=128, precision=precision, overwrite=True)  # fmt: skip
                result = train(cfg, progress=False)
                scores = load(run).evaluate(data.test, cache=caches[dt])
                step = result.train_seconds / max(1, len(result.losses))
                RUNS.keep({"model": model_name, "dataset": name, "kind": "train", "dtype": dt, "seed": seed, "lr": lr,
                       "metric": ds.metric, "dev": result.best[ds.metric], "test": scores[ds.metric],
                       "test_cache_hits": scores["cache_hits"], "train_seconds": result.train_seconds,
                       "read_seconds": result.read_seconds, "step_seconds": step,
                       "read_batch_seconds": _read_batch_seconds(caches[dt]),
                       "precision": result.precision, "cpu": cpu_model()})  # fmt: skip


def _sizes(path: Path) -> dict[str, Any]:
    cache = open_cache(path)
    stats = cache.stats()
    codec = CODECS[cache.settings.dtype]
    return {
        "bytes": stats["bytes"],
        "tokens": stats["tokens"],
        "bytes_per_token": stats["bytes"] / stats["tokens"],
        "state_bytes_per_token": codec.row_bytes(cache.settings.hidden_size),
    }


def _read_batch_seconds(path: Path, batches: int = 30, size: int = 32) -> float:
    """Best-of median time to read and dequantise a random batch of ``size`` documents to float32."""
    cache = open_cache(path)
    rng = np.random.default_rng(0)
    times = []
    for _ in range(batches):
        idx = rng.choice(len(cache), size, replace=False)
        t0 = time.perf_counter()
        cache.read_batch(idx)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _outliers(path: Path, sample: int = 500) -> dict[str, Any]:
    """Per-channel largest |value| over a sample of cached documents; the channels far above the rest."""
    cache = open_cache(path)
    rng = np.random.default_rng(0)
    idx = rng.choice(len(cache), min(sample, len(cache)), replace=False)
    peak = np.zeros(cache.settings.hidden_size)
    for i in idx:
        peak = np.maximum(peak, np.abs(cache.read(int(i)).hidden).max(axis=0))
    median = float(np.median(peak))
    top = np.argsort(peak)[::-1][:5]
    return {
        "channel_peak_median": median,
        "top_channels": [{"channel": int(c), "peak": float(peak[c]), "x_median": float(peak[c] / median)} for c in top],
    }


def report() -> None:
    rows = RUNS.rows()
    lines = [
        "# Quantised caches: bytes, conversion, read cost and fine-tuning accuracy",
        "",
        f"Generated {datetime.now(UTC).isoformat(timespec='seconds')} by `benchmarks/quantised_cache.py` on "
        f"{environment()['machine']}. The benchmark's subsets (2,000 training / 1,000 dev / 1,000 test, seeded), "
        f"cut at k = N/2, max length 128, {EPOCHS} epochs, seeds {SEEDS}; every dtype trained and tested from its "
        "own cache (float16 built, the others converted from it). Retention: mean test score over float16's on the "
        "same seeds (a dtype with fewer seeds so far is compared on those), 90% interval over seeds. Bytes per "
        "token: the whole cache on disk (states, tokens, index) and the states alone.",
        "",
        "Precision: each training run's (bf16 where the CPU runs it natively, else fp32); the MiniLM-L6 rows "
        "predate its recording (`-`): they ran in a session whose CPU had AVX512-BF16, under `--precision auto`: bf16. "
        "A training step in fp32 takes longer, so the same read is a smaller share of it.",
        "",
        "| model | dataset | dtype | precision | bytes/token (states) | vs float16 | build / convert (s) | read + "
        "dequantise 32 docs (ms) | share of a training step | test (mean ± std) | retention vs float16 [90%] | "
        "targets |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    pairs = sorted({(r["model"], r["dataset"]) for r in rows})
    summary = []
    for model, dataset in pairs:
        caches = {r["dtype"]: r for r in rows if (r["model"], r["dataset"], r["kind"]) == (model, dataset, "cache")}
        trains = [r for r in rows if (r["model"], r["dataset"], r["kind"]) == (model, dataset, "train")]
        ref_by_seed = {r["seed"]: r["test"] for r in trains if r["dtype"] == "float16"}
        for dt in DTYPES:
            c, ts = caches.get(dt), sorted([r for r in trains if r["dtype"] == dt], key=lambda r: r["seed"])
            if c is None:
                continue
            tests = [r["test"] for r in ts]
            ref = [ref_by_seed[r["seed"]] for r in ts if r["seed"] in ref_by_seed]  # float16 on the same seeds
            size = c["bytes_per_token"] / caches["float16"]["bytes_per_token"] if "float16" in caches else None
            read_ms = float(np.median([r["read_batch_seconds"] for r in ts])) * 1e3 if ts else None
            share = float(np.median([r["read_batch_seconds"] / r["step_seconds"] for r in ts])) if ts else None
            ret = retention_interval(tests, ref) if tests and ref else None
            verdict = _verdict(dt, size, tests, ref, share)
            summary.append({"model": model, "dataset": dataset, "dtype": dt, "size": size, "read_ms": read_ms,
                            "share": share, "tests": tests, "retention": ret, "verdict": verdict})  # fmt: skip
            lines.append(
                f"| {model} | {dataset} | {dt} | {'+'.join(sorted({r.get('precision') or '-' for r in ts})) or '-'} | "
                f"{c['bytes_per_token']:.0f} ({c['state_bytes_per_token']}) | "
                f"{'-' if size is None else f'{size:.1%}'} | {c['seconds']:.1f} | "
                f"{'-' if read_ms is None else f'{read_ms:.2f}'} | {'-' if share is None else f'{share:.2%}'} | "
                + _score_cell(tests)
                + " | "
                + _retention_cell(ret, len(tests) > 1 and len(ref) > 1)
                + f" | {verdict} |"
            )
    lines += ["", "## Outlier channels (float16 cache, largest |value| per channel over 500 documents)", ""]
    for r in rows:
        if r["kind"] == "outliers":
            tops = ", ".join(f"{t['channel']} ({t['peak']:.1f}, {t['x_median']:.0f}x)" for t in r["top_channels"])
            lines.append(
                f"- {r['model']} / {r['dataset']}: median channel peak {r['channel_peak_median']:.2f}; top: {tops}"
            )
    (RESULTS / "quantised_cache.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (RESULTS / "quantised_cache.json").write_text(json.dumps({"rows": rows, "summary": summary}, indent=2) + "\n")
    print("\n".join(lines))


def _score_cell(tests: list[float]) -> str:
    if not tests:
        return "-"
    return f"{np.mean(tests):.4f}" + (f" ± {np.std(tests, ddof=1):.4f}" if len(tests) > 1 else " (1 seed)")


def _retention_cell(ret: tuple[float, float, float] | None, interval: bool) -> str:
    if ret is None:
        return "-"
    return f"{ret[0]:.1%} [{ret[1]:.1%}, {ret[2]:.1%}]" if interval else f"{ret[0]:.1%} (no interval yet)"


def _verdict(dtype: str, size: float | None, tests: list[float], ref: list[float], share: float | None) -> str:
    """The issue's targets for this dtype, met or not."""
    if dtype == "float16" or size is None or not tests or not ref:
        return ""
    need_size, need_points = (0.52, 0.003) if dtype.startswith("int8") else (0.27, 0.01)
    spread = float(np.std(ref, ddof=1)) if len(ref) > 1 else 0.0
    gap = float(np.mean(ref) - np.mean(tests))
    allowed = max(need_points, spread) if dtype.startswith("int8") else need_points
    parts = [
        f"size {'met' if size <= need_size else 'missed'} (<= {need_size:.0%})",
        f"accuracy {'met' if gap <= allowed else 'missed'} (drop {gap * 100:+.2f} points, allowed {allowed * 100:.2f})",
    ]
    if share is not None:
        parts.append(f"read {'met' if share < 0.05 else 'missed'} (< 5%)")
    return "; ".join(parts)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="minilm-l6")
    ap.add_argument("--datasets", default="sci-cite,bc5cdr")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--dtypes", default=",".join(DTYPES), help="stored dtypes to train on, in this order")
    ap.add_argument("--report", action="store_true", help="only render the report from the kept rows")
    args = ap.parse_args()
    if not args.report:
        measure(args.model, args.datasets.split(","), args.precision, args.dtypes.split(","))
    report()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
