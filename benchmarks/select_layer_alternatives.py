"""Other estimators of retention that `select-layer` could use, measured against the same ground truth.

MiniLM-L6 on the two datasets whose full fine-tuning learned (sci-cite, bc5cdr; the truth in
``benchmarks/results/select-layer/truth-minilm-l6``), same seeded subsets and learning rates:

A. short proxies from scratch, other shapes than the selection's default (more epochs on fewer
   examples, smaller batches): final proxy retention per cut, and the cost as a share of the real
   full fine-tuning run;
B. warm start: one longer full fine-tuning proxy (1 epoch on half the training subset), then per cut k
   (and k = 0 as a control) its upper layers and head re-tuned for one short epoch on pretrained
   layer-k states (``TrainConfig.init_from``); retention against the proxy and against the control.

Writes ``benchmarks/results/select-layer/alternatives.json``; ``select_layer_validation.py --report``
adds it to the report.

    python benchmarks/select_layer_alternatives.py
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import paper_datasets
from embrecycle.bench import environment
from embrecycle.bench.runner import prepare_data, resolve_model
from embrecycle.data.readers import read_examples
from embrecycle.data.writers import write_examples
from embrecycle.selection import SelectConfig, select_layer
from embrecycle.tasks import get_task
from embrecycle.training import TrainConfig, train

FOLDER = Path(__file__).parent / "results" / "select-layer"
MODEL = "minilm-l6"
DATASET_NAMES = ("bc5cdr", "sci-cite")
SHAPES = ((1, 300, 16), (3, 100, 16), (3, 200, 16), (1, 300, 8))  # (epochs, examples, batch) per proxy
WARM = {"reference_examples": 1000, "retune_examples": 300, "dev_examples": 300, "retune_lr_share": 0.1}


RECYCLE_LR = {"classification": 3e-4, "ner": 1e-3}
REFERENCE_LR = {"classification": 3e-4, "ner": 3e-4}
"""The learning rates the committed results were measured at (recycling at 50%, and full fine-tuning)."""


def _short_proxies(ds: Any, data: Any, tmp: Path, real: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for epochs, sample, batch in SHAPES:
        t0 = time.perf_counter()
        sel = select_layer(
            SelectConfig(
                task=ds.task,
                model=resolve_model(MODEL),
                train=data.train,
                dev=data.dev,
                out=str(tmp / f"short-{ds.name}-{epochs}-{sample}-{batch}"),
                epochs=3,
                batch_size=32,
                lr=RECYCLE_LR[ds.task],
                reference_lr=REFERENCE_LR[ds.task],
                max_length=128,
                cache_root=str(tmp / "caches"),
                budget_minutes=60,
                proxy_epochs=epochs,
                sample=sample,
                proxy_batch_size=batch,
                dev_sample=sample,
            ),
            progress=None,
        )
        seconds = time.perf_counter() - t0
        rows.append(
            {
                "dataset": ds.name,
                "proxy": f"{epochs} epoch(s) x {sample} examples, batch {batch}",
                "reference_proxy_score": sel.reference["proxy_score"],
                "share_of_full_finetune": seconds / real[0]["train_seconds"],
                "cuts": {c.layer: c.measured_retention for c in sel.candidates},
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def _warm_start(ds: Any, data: Any, tmp: Path, real: dict[int, dict[str, Any]]) -> dict[str, Any]:
    train_ex, dev_ex = read_examples(data.train), read_examples(data.dev)
    rng = random.Random(42)
    order = rng.sample(range(len(train_ex)), WARM["reference_examples"])
    ext = "jsonl" if ds.task == "classification" else "conll"
    ref_file = write_examples([train_ex[i] for i in sorted(order)], tmp / f"warm-{ds.name}-ref.{ext}")
    retune = sorted(order[: WARM["retune_examples"]])
    retune_file = write_examples([train_ex[i] for i in retune], tmp / f"warm-{ds.name}-retune.{ext}")
    dev_pick = sorted(rng.sample(range(len(dev_ex)), WARM["dev_examples"]))
    dev_file = write_examples([dev_ex[i] for i in dev_pick], tmp / f"warm-{ds.name}-dev.{ext}")
    ref_lr = REFERENCE_LR[ds.task]
    common = {"task": ds.task, "model": resolve_model(MODEL), "dev": str(dev_file), "max_length": 128, "seed": 42}
    t0 = time.perf_counter()
    ref = train(
        TrainConfig(
            **common,
            layer=1,
            baseline="full-finetune",
            train=str(ref_file),
            out=str(tmp / f"warm-{ds.name}-ref"),
            epochs=1,
            lr=ref_lr,
            batch_size=16,
        ),
        progress=False,
    )
    metric = get_task(ds.task).primary_metric
    scores = {}
    for k in (0, 2, 3, 4):
        r = train(
            TrainConfig(
                **common,
                layer=k,
                train=str(retune_file),
                out=str(tmp / f"warm-{ds.name}-k{k}"),
                cache=str(tmp / f"warm-cache-{ds.name}-{k}"),
                epochs=1,
                lr=ref_lr * WARM["retune_lr_share"],
                batch_size=16,
                init_from=ref.run_dir,
            ),
            progress=False,
        )
        scores[k] = float(r.best[metric])
    row = {
        "dataset": ds.name,
        "reference_proxy_score": float(ref.best[metric]),
        "control_k0_score": scores[0],
        "share_of_full_finetune": (time.perf_counter() - t0) / real[0]["train_seconds"],
        "cuts": {k: scores[k] / float(ref.best[metric]) for k in (2, 3, 4)},
        "cuts_vs_control": {k: scores[k] / scores[0] for k in (2, 3, 4)},
    }
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    truth = json.loads((FOLDER / f"truth-{MODEL}" / "bench.json").read_text())
    bench_cfg = paper_datasets.bench_config(truth["config"])
    datasets = {d.name: d for d in bench_cfg.bench_datasets()}
    rows = [r for r in truth["rows"] if r["kind"] == "train"]
    result: dict[str, Any] = {"environment": environment(), "model": MODEL, "warm_start": WARM, "truth": {}}
    short, warm = [], []
    with tempfile.TemporaryDirectory(prefix="select-alt-") as name:
        tmp = Path(name)
        for ds_name in DATASET_NAMES:
            ds = datasets[ds_name]
            data = prepare_data(bench_cfg, tmp / "data", ds)
            real = {r["layer"]: r for r in rows if r["dataset"] == ds_name}
            result["truth"][ds_name] = {k: real[k]["test_score"] / real[0]["test_score"] for k in (2, 3, 4)}
            short += _short_proxies(ds, data, tmp, real)
            warm.append(_warm_start(ds, data, tmp, real))
    result["short_proxies"], result["warm_start_rows"] = short, warm
    path = FOLDER / "alternatives.json"
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"-> {path}")


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()  # no options; --help describes it
    main()
