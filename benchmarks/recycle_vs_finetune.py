"""Recycling vs full fine-tuning, side by side in one process: score retention and training speed.

MiniLM-L6 cut at k = 3 of 6 on sci-cite (classification, macro-F1) and bc5cdr
(NER, entity F1) from ``../shared/data``; same head, loop, optimiser, schedule,
epochs, batches and seed for both methods. Training time excludes evaluation
and the one-off cache build (reported separately).

Run: ``make bench-train`` or ``.venv/bin/python benchmarks/recycle_vs_finetune.py [--quick]``.
Writes ``benchmarks/results/recycle_vs_finetune.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import paper_datasets
from embrecycle.bench import environment, write_results
from embrecycle.bench.tables import fmt, markdown_table
from embrecycle.offline_models import minilm_l6_path
from embrecycle.training import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ("sci-cite", "bc5cdr")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny subsets, one epoch (a smoke run)")
    ap.add_argument("--train-limit", type=int, default=2000)
    ap.add_argument("--dev-limit", type=int, default=600)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lrs", type=float, nargs="+", default=[1e-4, 3e-4, 1e-3], help="learning-rate sweep")
    ap.add_argument("--head-lr-factor", type=float, default=None, help="head learning rate = factor x lr")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lora-r", type=int, default=8, help="LoRA rank (alpha = 2 r) for --upper lora")
    ap.add_argument("--upper", default="full", help="what recycling trains above the cut: full, lora, adapter, head")
    ap.add_argument("--layer", type=int, default=3)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1])
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    ap.add_argument("--methods", nargs="+", default=["recycle", "full-finetune"], choices=["recycle", "full-finetune"])
    ap.add_argument("--tag", default="", help="suffix of the results files")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    if args.quick:
        args.train_limit, args.dev_limit, args.epochs = 64, 32, 1
    paper_datasets.require()
    model = minilm_l6_path()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.datasets:
            ds = paper_datasets.dataset(name)
            task, metric = ds.task, ds.metric
            for seed, lr in [(s, lr) for s in args.seeds for lr in args.lrs]:
                for method in args.methods:
                    cfg = TrainConfig(
                        task=task,
                        model=model,
                        layer=args.layer,
                        train=ds.train,
                        dev=ds.dev,
                        out=f"{tmp}/{name}-{method}-{seed}-{lr:g}",
                        cache=f"{tmp}/cache-{name}",
                        baseline="full-finetune" if method == "full-finetune" else None,
                        upper=args.upper,
                        upper_options={"lora_r": args.lora_r, "lora_alpha": 2.0 * args.lora_r},
                        epochs=args.epochs,
                        lr=lr,
                        head_lr=lr * args.head_lr_factor if args.head_lr_factor else None,
                        batch_size=args.batch_size,
                        seed=seed,
                        max_length=args.max_length,
                        train_limit=args.train_limit,
                        dev_limit=args.dev_limit,
                    )
                    r = train(cfg, progress=False)
                    row = {
                        "dataset": name,
                        "task": task,
                        "metric": metric,
                        "method": method,
                        "seed": seed,
                        "lr": lr,
                        "score": r.best[metric],
                        "best": r.best,
                        "train_seconds": r.train_seconds,
                        "seconds_per_epoch": r.train_seconds / len(r.epoch_seconds),
                        "examples_per_second": r.examples_per_second,
                        "cache_build_seconds": r.cache_build_seconds,
                        "trainable_parameters": r.trainable_parameters,
                        "train_examples": r.train_examples,
                        "dev_examples": r.dev_examples,
                    }
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    report = _report(rows, args)
    env = environment() | {"args": vars(args) | {"out": str(args.out)}}
    stem = ("recycle_vs_finetune_quick" if args.quick else "recycle_vs_finetune") + args.tag
    write_results({"environment": env, "rows": rows}, args.out, stem, report)
    print(report)
    return 0


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


BEST_COLUMNS = [
    "dataset", "metric", "full fine-tuning (lr)", "recycling (lr)", "retention", "s/epoch full", "s/epoch recycled",
    "speed-up per epoch", "cache build (s)",
]  # fmt: skip
LR_COLUMNS = [
    "dataset", "lr", "full fine-tuning", "recycling", "retention", "s/epoch full", "s/epoch recycled", "speed-up"
]  # fmt: skip


def _report(rows: list[dict], args: argparse.Namespace) -> str:  # type: ignore[type-arg]
    lines = [
        f"# Recycling (k = {args.layer} of 6) vs full fine-tuning, MiniLM-L6",
        "",
        f"{args.train_limit} training / {args.dev_limit} dev examples per dataset (seeded subsets), "
        f"{args.epochs} epochs, learning rates {args.lrs}, batch {args.batch_size}, "
        f"max length {args.max_length}, seeds {args.seeds}. "
        "Both methods share head, loop, optimiser, schedule and batches; only the input differs (cached layer-"
        f"{args.layer} states vs text). Scores are the best dev evaluation (end of an epoch). One process, 2 CPU "
        "cores; absolute times compare only within this run. Training time excludes evaluation and the one-off "
        "cache build (its own column).",
        "",
        "## Best of the learning-rate sweep, per method",
        "",
    ]
    best_rows, lr_rows = [], []
    for name in dict.fromkeys(r["dataset"] for r in rows):
        full = [r for r in rows if r["dataset"] == name and r["method"] == "full-finetune"]
        rec = [r for r in rows if r["dataset"] == name and r["method"] == "recycle"]
        if not full or not rec:
            continue
        ef, er = _mean([r["seconds_per_epoch"] for r in full]), _mean([r["seconds_per_epoch"] for r in rec])
        bf, br = _best(full), _best(rec)
        best_rows.append(
            [
                name,
                full[0]["metric"],
                f"{bf[1]:.4f} ({bf[0]:g})",
                f"{br[1]:.4f} ({br[0]:g})",
                fmt(br[1] / bf[1] if bf[1] else None, ".1%"),
                f"{ef:.1f}",
                f"{er:.1f}",
                f"{ef / er:.2f}x",
                f"{max(r['cache_build_seconds'] for r in rec):.1f}",
            ]
        )
        for lr in args.lrs:
            f = [r for r in full if r["lr"] == lr]
            c = [r for r in rec if r["lr"] == lr]
            if f and c:
                sf, sc = _mean([r["score"] for r in f]), _mean([r["score"] for r in c])
                tf, tc = _mean([r["seconds_per_epoch"] for r in f]), _mean([r["seconds_per_epoch"] for r in c])
                lr_rows.append(
                    [
                        name,
                        f"{lr:g}",
                        f"{sf:.4f}",
                        f"{sc:.4f}",
                        fmt(sc / sf if sf else None, ".1%"),
                        f"{tf:.1f}",
                        f"{tc:.1f}",
                        f"{tf / tc:.2f}x",
                    ]
                )
    lines += markdown_table(BEST_COLUMNS, best_rows)
    lines += ["", "## Every learning rate", "", *markdown_table(LR_COLUMNS, lr_rows)]
    lines += [
        "",
        "Targets (issue 3): retention >= 98%, speed-up per epoch >= 1.7x (compute ceiling of the layers: "
        "2x; full fine-tuning also back-propagates into the embeddings and updates their 11.7M weights).",
        "",
    ]
    return "\n".join(lines)


def _best(rows: list[dict]) -> tuple[float, float]:  # type: ignore[type-arg]
    """(lr, mean score over seeds) of the best learning rate."""
    by_lr: dict[float, list[float]] = {}
    for r in rows:
        by_lr.setdefault(r["lr"], []).append(r["score"])
    lr = max(by_lr, key=lambda k: _mean(by_lr[k]))
    return lr, _mean(by_lr[lr])


if __name__ == "__main__":
    raise SystemExit(main())
