"""Cross-model recycling measured: MiniLM-L6 trained on MPNet-base's cached states (issue 23).

Per dataset (sci-cite, chemprot, bc5cdr; the realistic benchmark's very subsets: 2,000 training examples,
chemprot all 4,169, 1,000 dev and test, 3 epochs, max length 128):

(a) MiniLM-L6 fully fine-tuned alone: the benchmark's ``minilm-l6`` ``full-finetune`` runs (``make bench``);
(b) MiniLM-L6 with MPNet-base's layer-6 or layer-12 states fused into its input (this script): the MPNet cache
    of the training and dev documents is built once per layer (timed), then MiniLM trains on it at learning
    rates 1e-4 and 3e-4 on seed 1 and at the better of them (dev score) on seeds 2 and 3. The ``mlp`` fusion
    is tried on seed 1 at the linear fusion's chosen rate, with the better layer (by mean dev score);
(c) MPNet-base recycled at 50%: the benchmark's ``mpnet-base`` ``recycle-50`` runs;
(d) MPNet-base fully fine-tuned: the benchmark's ``mpnet-base`` ``full-finetune`` runs.

Each (b) run is timed as the benchmark times its runs: training examples per second, then prediction on the
dev documents (in the source cache: read, aligned, MiniLM runs) and on the test documents (not in it: MPNet's
lower layers run for them, into a copy of the cache, then MiniLM). The alignment's own cost is measured
apart: aligning each document's MPNet tokens onto MiniLM's (once per document) and averaging a batch of 32
documents' states onto MiniLM's tokens (per step), against a training step.

Training speed is also measured side by side, so that the speed claim does not rest on runs timed on other
days or machines: per dataset, (a), (b) at both layers and (c) each train one epoch on the same first
256 training examples, in turn, twice (the second pass in reverse order), on this machine in this precision;
the better throughput of each is kept (a ``timing`` row). (c) trains on the layer-6 source cache, which is
exactly MPNet-base's cache at k = 6 of 12. The verdict's speed-up comes from these rows where they exist.

The question: does (b) close most of the gap between (a) and (d) at close to (a)'s cost? Target: (b) recovers
at least half of the score gap between (a) and (d) on at least two of the three datasets while training at
least 2x faster than (c).

    .venv/bin/python benchmarks/cross_model.py [--datasets sci-cite,bc5cdr,chemprot]
    .venv/bin/python benchmarks/cross_model.py --report

Resumable: rows are kept per finished run in ``benchmarks/results/cross_model/runs.jsonl`` (caches and data
under ``benchmarks/results/cross_model/work``, not for version control). Report: ``cross_model.{md,json,png}``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import paper_datasets  # noqa: E402
from embrecycle import BuildConfig, build_cache, load, open_cache  # noqa: E402
from embrecycle.align import align, aligned_states  # noqa: E402
from embrecycle.bench.config import BenchConfig  # noqa: E402
from embrecycle.bench.report import summarize  # noqa: E402
from embrecycle.bench.results import cpu_model, environment, machine_identity  # noqa: E402
from embrecycle.bench.runner import prepare_data, resolve_model  # noqa: E402
from embrecycle.data.readers import read_examples  # noqa: E402
from embrecycle.data.writers import serialise_examples  # noqa: E402
from embrecycle.encoder import load_config, load_tokenizer  # noqa: E402
from embrecycle.tokenization import encode_documents  # noqa: E402
from embrecycle.training import TrainConfig, train  # noqa: E402
from kept_rows import KeptRows  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
BENCH = RESULTS / "bench-runs"
OUT = RESULTS / "cross_model"
RUNS = KeptRows(OUT / "runs.jsonl")
CONSUMER, SOURCE = "minilm-l6", "mpnet-base"
LAYERS = [12, 6]  # the source's states: its last layer first (the likelier to help), then its middle
LRS = [1e-4, 3e-4]  # MiniLM-L6 full fine-tuning's best rates on these datasets lie in this pair
SEEDS = [1, 2, 3]
DATASETS = ["sci-cite", "bc5cdr", "chemprot"]
SCALE = {"train_limit": 2000, "dev_limit": 1000, "test_limit": 1000}
LIMITS = ["chemprot:train=all"]  # per dataset, as `make bench` gives them
EPOCHS, MAX_LENGTH, BATCH = 3, 128, 32
TIMING_EXAMPLES = 256
"""Training examples each side-by-side timing run takes (one epoch)."""


def _method(layer: int, fusion: str) -> str:
    return f"fused-mpnet-L{layer}" + ("" if fusion == "linear" else f"-{fusion}")


def _bench_settings(dataset: str) -> dict[str, Any] | None:
    path = BENCH / CONSUMER / "runs" / CONSUMER / dataset / "settings.json"
    return json.loads(path.read_text()) if path.exists() else None


def measure(datasets: list[str], precision: str, timing: bool = True) -> None:
    work = OUT / "work"
    work.mkdir(parents=True, exist_ok=True)
    (work / ".gitignore").write_text("*\n")
    consumer, source = resolve_model(CONSUMER), resolve_model(SOURCE)
    for name in datasets:
        limits = [x for x in LIMITS if x.startswith(f"{name}:")]
        config = BenchConfig(
            models=[CONSUMER], datasets=[paper_datasets.spec(name)], epochs=EPOCHS, limits=limits, **SCALE
        )
        (ds,) = config.bench_datasets()
        data = prepare_data(config, work / "data", ds)
        settings = _bench_settings(name)
        if settings is not None and settings["subsets"] != data.fingerprint:
            raise SystemExit(f"error: {name}: these subsets differ from the benchmark's ({BENCH}); compare settings")
        words = ds.task == "ner"
        docs = [e.doc for f in (data.train, data.dev) for e in read_examples(f)]
        test = list(data.test)
        for layer in LAYERS:
            cache = work / f"{SOURCE}-{name}-L{layer}"
            done = {(r.get("method"), r.get("lr"), r.get("seed")) for r in RUNS.rows() if r["dataset"] == name}
            built = {r["layer"] for r in RUNS.rows() if r["kind"] == "cache" and r["dataset"] == name}
            if layer not in built or not (cache / "manifest.json").exists():
                shutil.rmtree(cache, ignore_errors=True)  # a killed build: rebuilt, so that its time is whole
                build = BuildConfig(model=source, layer=layer, max_length=MAX_LENGTH, dtype="float16",
                                    precision=precision)  # fmt: skip
                t0 = time.perf_counter()
                summary = build_cache(docs, cache, build, progress=False)
                seconds = time.perf_counter() - t0
                opened = open_cache(cache)
                stats = opened.stats()
                RUNS.keep({"kind": "cache", "dataset": name, "layer": layer, "build_seconds": seconds,
                       "precision": opened.settings.precision, "cpu": cpu_model(),
                       "documents": summary.computed + summary.reused, "tokens": stats["tokens"],
                       "bytes": stats["bytes"], "bytes_per_token": stats["bytes"] / stats["tokens"],
                       **_alignment_cost(consumer, cache, docs, words)})  # fmt: skip
            linear = _method(layer, "linear")
            for lr in LRS:
                if (linear, lr, 1) not in done:
                    RUNS.keep(_run(consumer, cache, data, ds, layer, "linear", lr, 1, test, precision))
            best = _best_lr(name, linear)
            for seed in SEEDS[1:]:
                if (linear, best, seed) not in done:
                    RUNS.keep(_run(consumer, cache, data, ds, layer, "linear", best, seed, test, precision))
        # the mlp fusion, once: with the better layer (mean dev score over seeds) at its chosen rate
        layer = max(LAYERS, key=lambda k: _dev(name, _method(k, "linear"), _best_lr(name, _method(k, "linear"))))
        lr = _best_lr(name, _method(layer, "linear"))
        done = {(r.get("method"), r.get("lr"), r.get("seed")) for r in RUNS.rows() if r["dataset"] == name}
        if (_method(layer, "mlp"), lr, 1) not in done:
            cache = work / f"{SOURCE}-{name}-L{layer}"
            RUNS.keep(_run(consumer, cache, data, ds, layer, "mlp", lr, 1, test, precision))
        if timing:
            _side_by_side(name, data, ds, consumer, source, work, precision)


def _side_by_side(name: str, data: Any, ds: Any, consumer: str, source: str, work: Path, precision: str) -> None:
    """(a), (b) at both layers and (c) trained in turn on the same examples, twice: their throughputs compared."""
    machine = machine_identity()
    for r in RUNS.rows():
        if (
            r["kind"] == "timing"
            and r["dataset"] == name
            and r["cpu"] == machine["cpu"]
            and (precision == "auto" or r["precision"] == precision)
        ):
            return  # measured on this machine already
    ext = "jsonl" if ds.task == "classification" else "conll"
    caches = {layer: work / f"{SOURCE}-{name}-L{layer}" for layer in LAYERS}
    roles = {
        "(a)": {"model": consumer, "layer": 3, "baseline": "full-finetune"},
        **{f"(b) L{k}": {"model": consumer, "layer": 0, "source_cache": str(c)} for k, c in caches.items()},
        "(c)": {"model": source, "layer": 6, "cache": str(caches[6])},
    }
    speeds: dict[str, list[float]] = {}
    used = set()
    with tempfile.TemporaryDirectory(prefix="embrecycle-cross-timing-") as tmp:
        train_f, dev_f = Path(tmp) / f"train.{ext}", Path(tmp) / f"dev.{ext}"
        train_f.write_text(serialise_examples(read_examples(data.train)[:TIMING_EXAMPLES], ext), encoding="utf-8")
        dev_f.write_text(serialise_examples(read_examples(data.dev)[:32], ext), encoding="utf-8")
        for order in (list(roles), list(roles)[::-1]):
            for role in order:
                cfg = TrainConfig(task=ds.task, train=str(train_f), dev=str(dev_f), out=str(Path(tmp) / "run"),
                                  epochs=1, lr=1e-4, batch_size=BATCH, seed=1, max_length=MAX_LENGTH,
                                  precision=precision, overwrite=True, **roles[role])  # fmt: skip
                result = train(cfg, progress=False)
                speeds.setdefault(role, []).append(result.examples_per_second)
                used.add(result.precision)
                print(f"{name} timing {role}: {result.examples_per_second:.1f} ex/s ({result.precision})", flush=True)
    RUNS.keep({"kind": "timing", "dataset": name, **machine, "precision": "+".join(sorted(used)),
               "examples": TIMING_EXAMPLES, "examples_per_second": {k: max(v) for k, v in speeds.items()},
               "all_examples_per_second": speeds,
               "timestamp": datetime.now(UTC).isoformat(timespec="seconds")})  # fmt: skip


def _timing(dataset: str) -> dict[str, Any] | None:
    """The latest side-by-side timing row of ``dataset``."""
    rows = [r for r in RUNS.rows() if r["kind"] == "timing" and r["dataset"] == dataset]
    return rows[-1] if rows else None


def _fusion_lines() -> list[str]:
    """One line per kept mlp run: its test score beside the linear fusion's on the same layer, rate and seed."""
    lines = []
    for dataset in DATASETS:
        for layer in LAYERS:
            for mlp in _runs(dataset, _method(layer, "mlp")):
                linear = [r for r in _runs(dataset, _method(layer, "linear"))
                          if r["lr"] == mlp["lr"] and r["seed"] == mlp["seed"]]  # fmt: skip
                if linear:
                    mine, theirs = mlp["test_score"], linear[0]["test_score"]
                    lines.append(f"- {dataset}, MPNet layer {layer}, lr {mlp['lr']:g}, seed {mlp['seed']}: mlp "
                                 f"{mine:.4f}, linear {theirs:.4f} ({mine - theirs:+.4f})")  # fmt: skip
    return lines or ["- not measured yet"]


def _runs(dataset: str, method: str) -> list[dict[str, Any]]:
    return [r for r in RUNS.rows() if r["kind"] == "train" and r["dataset"] == dataset and r["method"] == method]


def _best_lr(dataset: str, method: str) -> float:
    first = [r for r in _runs(dataset, method) if r["seed"] == SEEDS[0]]
    return max(first, key=lambda r: r["dev_score"])["lr"] if first else LRS[0]


def _dev(dataset: str, method: str, lr: float) -> float:
    return float(np.mean([r["dev_score"] for r in _runs(dataset, method) if r["lr"] == lr] or [0.0]))


def _run(
    consumer: str, cache: Path, data: Any, ds: Any, layer: int, fusion: str, lr: float, seed: int,
    test: list[Any], precision: str,
) -> dict[str, Any]:  # fmt: skip
    """One fused MiniLM run, timed like the benchmark's runs (``embrecycle.bench.runner._train_run``)."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="embrecycle-cross-") as tmp:
        cfg = TrainConfig(task=ds.task, model=consumer, layer=0, train=data.train, dev=data.dev,
                          out=str(Path(tmp) / "run"), source_cache=str(cache), fusion=fusion, epochs=EPOCHS,
                          lr=lr, batch_size=BATCH, seed=seed, max_length=MAX_LENGTH, precision=precision)  # fmt: skip
        result = train(cfg, progress=False)
        model = load(cfg.out, precision=precision)
        dev_docs = [e.doc for e in read_examples(data.dev)]
        t0 = time.perf_counter()
        cached = model.predict(dev_docs)  # in the source cache: read, aligned, MiniLM runs
        cached_s = time.perf_counter() - t0
        fresh = Path(tmp) / "source-copy"
        shutil.copytree(cache, fresh)  # the test documents go into a copy: every run finds them missing
        t0 = time.perf_counter()
        new = model.predict([e.doc for e in test], cache=fresh, update_cache=True)  # MPNet's lower layers run
        new_s = time.perf_counter() - t0
        scores = model.evaluate(test, cache=fresh)
    metric = ds.metric
    return {
        "kind": "train", "model": CONSUMER, "num_layers": 6, "dataset": ds.name, "task": ds.task,
        "metric": metric, "method": _method(layer, fusion), "upper": "full", "baseline": None, "layer": 0,
        "source": SOURCE, "source_layer": layer, "fusion": fusion, "seed": seed, "lr": lr,
        "head_lr": result.head_lr, "default_lr": LRS[0], "device": result.device, "precision": result.precision,
        "threads": result.threads, "dev_score": result.best[metric], "dev_constant_score": result.constant_score,
        "dev_chance_score": result.chance_score, "learned_nothing": result.learned_nothing,
        "test_score": scores[metric], "train_seconds": result.train_seconds, "epochs": len(result.epoch_seconds),
        "train_examples": result.train_examples, "train_examples_per_second": result.examples_per_second,
        "step_seconds": result.train_seconds / max(1, len(result.losses)),
        "read_seconds": result.read_seconds,
        "read_fraction": result.read_seconds / result.train_seconds if result.train_seconds else 0.0,
        "cache_build_seconds": 0.0, "cache": str(cache), "peak_memory_bytes": 0,
        "trainable_parameters": result.trainable_parameters, "run_weights_bytes": result.weights_bytes,
        "infer_cached_docs": len(dev_docs), "infer_cached_hits": cached.hits,
        "infer_cached_docs_per_second": len(dev_docs) / cached_s if cached_s else 0.0,
        "infer_new_docs": len(test), "infer_new_misses": new.misses,
        "infer_new_docs_per_second": len(test) / new_s if new_s else 0.0,
        "run_wall_seconds": time.perf_counter() - started,
    }  # fmt: skip


def _alignment_cost(consumer: str, cache_dir: Path, docs: list[Any], words: bool, size: int = 32) -> dict[str, Any]:
    """What aligning MPNet's tokens onto MiniLM's costs: once per document, and per batch of ``size``."""
    cache = open_cache(cache_dir)
    tokenizer = load_tokenizer(consumer, load_config(consumer).model_type)
    mine = encode_documents(tokenizer, docs, MAX_LENGTH, warn=False)
    index = [cache.index_of(cache.key(d)) for d in docs]
    theirs = [cache.encoded(int(i)) for i in index if i is not None]
    t0 = time.perf_counter()
    alignments = [align(c, s, words=words) for c, s in zip(mine, theirs, strict=True)]
    per_doc = (time.perf_counter() - t0) / len(alignments)
    rng = np.random.default_rng(0)
    times = []
    for _ in range(30):
        rows = rng.choice(len(alignments), size, replace=False)
        batch = cache.read_batch([int(index[r]) for r in rows])  # type: ignore[arg-type]
        width = max(len(mine[r].input_ids) for r in rows)
        t0 = time.perf_counter()
        aligned_states([alignments[r] for r in rows], batch.hidden, width)
        times.append(time.perf_counter() - t0)
    identity = sum(a.is_identity() for a in alignments)
    return {"align_ms_per_doc": per_doc * 1e3, "aligned_batch_ms": float(np.median(times)) * 1e3,
            "source_tokens_per_consumer_token": sum(len(s.input_ids) for s in theirs)
            / sum(len(c.input_ids) for c in mine), "identity_alignments": identity}  # fmt: skip


def _bench_rows(model: str, dataset: str) -> list[dict[str, Any]]:
    folder = BENCH / model / "runs" / model / dataset
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*-seed*.json"))]


ROLES = [  # (the report's role, the plot's label, model, method)
    ("(a) MiniLM-L6 fine-tuned", "(a)", CONSUMER, "full-finetune"),
    ("(b) MiniLM-L6 + MPNet L12 states", "(b) L12", CONSUMER, "fused-mpnet-L12"),
    ("(b) MiniLM-L6 + MPNet L6 states", "(b) L6", CONSUMER, "fused-mpnet-L6"),
    ("(b) MiniLM-L6 + MPNet L12, mlp fusion", "(b) L12 mlp", CONSUMER, "fused-mpnet-L12-mlp"),
    ("(b) MiniLM-L6 + MPNet L6, mlp fusion", "(b) L6 mlp", CONSUMER, "fused-mpnet-L6-mlp"),
    ("(c) MPNet-base recycled at 50%", "(c)", SOURCE, "recycle-50"),
    ("(d) MPNet-base fine-tuned", "(d)", SOURCE, "full-finetune"),
]


def report() -> None:
    kept = RUNS.rows()
    lines = [
        "# Cross-model recycling: MiniLM-L6 trained on MPNet-base's cached states",
        "",
        f"Generated {datetime.now(UTC).isoformat(timespec='seconds')} by `benchmarks/cross_model.py` on "
        f"{environment()['machine']}. The realistic benchmark's subsets (2,000 training examples, chemprot all "
        f"4,169; 1,000 dev and test), {EPOCHS} epochs, max length {MAX_LENGTH}, bf16 where the CPU runs it "
        "natively, else fp32 (each row says which; a row of runs on both kinds of machine says both). (a), "
        "(c) and (d) are the benchmark's own runs (`make bench`); (b) is this script's. Each method at its best "
        "learning rate on seed 1 (dev score), then seeds 2 and 3. Times are medians over seeds; training time "
        "per example counts every epoch. Inference: documents in the cache (for (b): the MPNet cache, read and "
        "aligned) and new documents (for (b): MPNet's lower layers run, then MiniLM).",
        "",
        "| dataset | method | lr | seeds | precision | test (mean ± std) | train ms/example | infer ms/doc, cached | "
        "infer ms/doc, new |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    verdicts, summary_rows = [], []
    for dataset in DATASETS:
        rows = _bench_rows(CONSUMER, dataset) + _bench_rows(SOURCE, dataset)
        rows += [r for r in kept if r["kind"] == "train" and r["dataset"] == dataset]
        if not rows:
            continue
        found = {(s["model"], s["method"]): s for s in summarize(rows)}
        for role, label, model, method in ROLES:
            s = found.get((model, method))
            if s is None and method.endswith("-mlp") and any(k[1].endswith("-mlp") for k in found):
                continue  # the mlp fusion runs with the better source layer only
            if s is None:
                lines.append(f"| {dataset} | {role} | - | 0 | - | not measured yet | - | - | - |")
                continue
            used = sorted({str(r.get("precision")) for r in rows if r["model"] == model and r["method"] == method})
            summary_rows.append({"dataset": dataset, "role": role, "label": label, **s, "precision": "+".join(used)})
            sd = f" ± {s['test_std']:.4f}" if s["seeds"] > 1 else ""
            lines.append(
                f"| {dataset} | {role} | {s['lr']:g} | {s['seeds']} | {'+'.join(used)} | {s['test']:.4f}{sd} | "
                f"{1e3 / s['train_eps']:.1f} | {1e3 / s['infer_cached_dps']:.1f} | {1e3 / s['infer_new_dps']:.1f} |"
            )
        verdicts.append(_verdict(dataset, found))
    caches = [r for r in kept if r["kind"] == "cache"]
    timings = [r for r in kept if r["kind"] == "timing"]
    roles = ["(a)", *[f"(b) L{k}" for k in LAYERS], "(c)"]
    lines += [
        "",
        "## Training speed side by side",
        "",
        f"Each trains one epoch on the same first {TIMING_EXAMPLES} training examples, in turn, twice (the second "
        "pass reversed), on one machine; training examples per second, the better of the two.",
        "",
        "| dataset | CPU (bf16 units) | precision | " + " | ".join(roles) + " | (b) vs (c) | (b) vs (a) |",
        "|---|---|---|" + "---|" * (len(roles) + 2),
        *[
            f"| {t['dataset']} | {t['cpu']} ({', '.join(t['cpu_bf16_units']) or 'none'}) | {t['precision']} | "
            + " | ".join(f"{t['examples_per_second'][r]:.1f}" for r in roles)
            + " | "
            + ", ".join(
                f"L{k} {t['examples_per_second'][f'(b) L{k}'] / t['examples_per_second']['(c)']:.2f}x" for k in LAYERS
            )
            + " | "
            + ", ".join(
                f"L{k} {t['examples_per_second'][f'(b) L{k}'] / t['examples_per_second']['(a)']:.2f}x" for k in LAYERS
            )
            + " |"
            for t in timings
        ],
    ]
    lines += [
        "",
        "## Does (b) close the gap?",
        "",
        "Gap recovered: ((b) - (a)) / ((d) - (a)) on mean test scores, (b) being the fused layer with the better "
        "mean dev score. Speed: (c)'s training time per example over (b)'s, side by side where measured (above), "
        "else from the medians of the runs.",
        "",
        *[f"- {v['text']}" for v in verdicts],
        "",
        _overall(verdicts),
        "",
        "## Which fusion layer",
        "",
        "The mlp fusion against the linear one (the default), on the same source layer, learning rate and seed "
        "(test score):",
        "",
        *_fusion_lines(),
        "",
        "## What the source cache and the alignment cost",
        "",
        "Each build of a source cache is a row (a cache whose directory was gone, on a new machine, was built"
        " again: a second row).",
        "",
        "| dataset | MPNet layer | precision | documents | build (s) | bytes/token | MPNet tokens per MiniLM token "
        "| align (ms/doc, once) | average a batch of 32 (ms, per step) |",
        "|---|---|---|---|---|---|---|---|---|",
        *[
            f"| {c['dataset']} | {c['layer']} | {c.get('precision', '-')} | {c['documents']} | "
            f"{c['build_seconds']:.0f} | "
            f"{c['bytes_per_token']:.0f} | {c['source_tokens_per_consumer_token']:.2f} | "
            f"{c['align_ms_per_doc']:.3f} | {c['aligned_batch_ms']:.2f} |"
            for c in caches
        ],
    ]
    (RESULTS / "cross_model.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (RESULTS / "cross_model.json").write_text(
        json.dumps(
            {"summary": summary_rows, "verdicts": verdicts, "caches": caches, "timings": timings}, indent=2, default=str
        )
        + "\n"
    )
    _plot(summary_rows)
    print("\n".join(lines))


def _verdict(dataset: str, found: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    a, c, d = (
        found.get((CONSUMER, "full-finetune")),
        found.get((SOURCE, "recycle-50")),
        found.get((SOURCE, "full-finetune")),
    )
    fused = [found[(CONSUMER, m)] for m in ("fused-mpnet-L12", "fused-mpnet-L6") if (CONSUMER, m) in found]
    out: dict[str, Any] = {"dataset": dataset, "recovered": None, "speedup_vs_c": None}
    if not fused or a is None:
        out["text"] = f"{dataset}: not measured yet ((a) or (b) missing)."
        return out
    b = max(fused, key=lambda s: s["dev"])
    parts = [f"{dataset}: (b) = {b['method']} at {b['test']:.4f} vs (a) {a['test']:.4f}"]
    if d is not None:
        gap = d["test"] - a["test"]
        out["recovered"] = (b["test"] - a["test"]) / gap if gap > 0 else None
        seeds = "" if d["seeds"] >= len(SEEDS) else f" ({d['seeds']} of {len(SEEDS)} seeds)"
        parts.append(
            f"(d) {d['test']:.4f}{seeds}: "
            + (
                "no gap to close"
                if out["recovered"] is None
                else f"{out['recovered']:.0%} of the gap recovered"
                + (" ((b) scored below (a))" if out["recovered"] < 0 else "")
            )
        )
    else:
        parts.append("(d) not measured yet")
    timing = _timing(dataset)
    role = "(b) L" + b["method"].removeprefix("fused-mpnet-L")
    if timing is not None and role in timing["examples_per_second"]:
        eps = timing["examples_per_second"]
        out["speedup_vs_c"], out["speed_source"] = eps[role] / eps["(c)"], "side by side"
        parts.append(
            f"trains {out['speedup_vs_c']:.2f}x as fast as (c) and at {eps[role] / eps['(a)']:.2f}x (a)'s speed "
            f"(side by side, {timing['precision']})"
        )
    else:
        if c is not None:
            out["speedup_vs_c"], out["speed_source"] = b["train_eps"] / c["train_eps"], "per-run medians"
            parts.append(f"trains {out['speedup_vs_c']:.2f}x as fast as (c)")
        else:
            parts.append("(c) not measured yet")
        parts.append(f"{b['train_eps'] / a['train_eps']:.2f}x (a)'s training speed (per-run medians)")
    out["text"] = "; ".join(parts) + "."
    return out


def _overall(verdicts: list[dict[str, Any]]) -> str:
    """The target, dataset by dataset: half the gap recovered while training at least 2x faster than (c)."""
    met = [v["dataset"] for v in verdicts if (v["recovered"] or 0) >= 0.5 and (v["speedup_vs_c"] or 0) >= 2]
    measured = [v for v in verdicts if v["recovered"] is not None]
    verdict = "met" if len(met) >= 2 else ("not met" if len(measured) - len(met) > 1 else "open")
    return (
        f"**Target** (at least half of the gap recovered on at least two of the three datasets, training at least "
        f"2x faster than (c)): **{verdict}**; met on {len(met)} of the {len(measured)} datasets measured"
        + (f" ({', '.join(met)})" if met else "")
        + "."
    )


def _plot(rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = [d for d in DATASETS if any(r["dataset"] == d for r in rows)]
    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 4), squeeze=False)
    for ax, dataset in zip(axes[0], datasets, strict=True):
        for r in (r for r in rows if r["dataset"] == dataset):
            ax.errorbar(1e3 / r["train_eps"], r["test"], yerr=r["test_std"] or 0, fmt="o", capsize=3)
            below = "mlp" in r["role"]  # it sits on (b)'s own point when it scores alike
            ax.annotate(f"{r['label']} ({r['precision']})", (1e3 / r["train_eps"], r["test"]),
                        textcoords="offset points", xytext=(4, -10 if below else 4), fontsize=8)  # fmt: skip
        ax.set_xscale("log")
        ax.set_xlabel("training ms per example (median of runs, log)")
        ax.set_ylabel("test score")
        ax.set_title(dataset)
    fig.tight_layout()
    fig.savefig(RESULTS / "cross_model.png", dpi=110)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--no-timing", action="store_true", help="skip the side-by-side training-speed runs")
    ap.add_argument("--report", action="store_true", help="only render the report from the kept rows")
    args = ap.parse_args()
    if not args.report:
        measure(args.datasets.split(","), args.precision, timing=not args.no_timing)
    report()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
