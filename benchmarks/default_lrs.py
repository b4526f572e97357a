"""Do the default learning rates learn on tasks nobody tuned them for?

Every training mode at its default learning rate (no ``lr``: :mod:`embrecycle.modes`), with every other
setting at its default too (3 epochs, batch 32, warmup 10%), on two real tasks that none of the defaults
were chosen on: BBC News topics (5 classes, the demo's 400 training / 200 dev articles, first 128 tokens)
and WNUT-16 tweets (NER, 10 entity types, the demo's 1,500 / 300 sentences); cut at k = N/2. Each run's
best dev score is set against the constant prediction (the most frequent label; NER: ``O`` everywhere)
and against chance (:mod:`embrecycle.training.chance`). Target: every mode clearly above both.

    .venv/bin/python benchmarks/default_lrs.py [--model minilm-l6|mpnet-base] [--modes full,lora,...]
    .venv/bin/python benchmarks/default_lrs.py --report

Rows are kept per finished run in ``benchmarks/results/default_lrs/runs.jsonl`` (a re-run skips them);
the report is ``benchmarks/results/default_lrs.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from demo import CLS_MAX_LEN, prepare_bbc, prepare_wnut  # noqa: E402

from embrecycle.modes import MODES  # noqa: E402
from embrecycle.offline_models import minilm_l6_path, mpnet_base_path  # noqa: E402
from embrecycle.training import TrainConfig, train  # noqa: E402
from kept_rows import KeptRows  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
RUNS = KeptRows(RESULTS / "default_lrs" / "runs.jsonl")
MODELS = {"minilm-l6": minilm_l6_path, "mpnet-base": mpnet_base_path}
HIDDEN = {"minilm-l6": 384, "mpnet-base": 768}
"""Each model's hidden size: the width its default rates are scaled for (``embrecycle.modes.width_scale``)."""
CLEARLY = 0.05
"""How far above both bars a run must be to count as learning clearly (absolute, in the primary metric)."""
DEFAULT_EPOCHS = TrainConfig.__dataclass_fields__["epochs"].default
"""``TrainConfig``'s default epochs: a row trained at other epochs is a probe, not a check of the defaults."""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=sorted(MODELS), default="minilm-l6")
    ap.add_argument("--modes", default=",".join(MODES), help="comma-separated training modes")
    ap.add_argument("--tasks", default="bbc,wnut")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--lr", default=None, help="comma-separated rates other than the default (evidence for a change)")
    ap.add_argument("--epochs", type=int, default=None, help="epochs other than the default (3)")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--report", action="store_true", help="only render the report from the kept rows")
    args = ap.parse_args()
    if not args.report:
        measure(args)
    report()
    return 0


def _rates(spec: str | None) -> list[float | None]:
    """``--lr``: None (each mode's default) or the rates given."""
    return [None] if not spec else [float(x) for x in spec.split(",")]


def _key(row: dict[str, Any]) -> tuple[Any, ...]:
    """A run's identity: model, task, mode, seed, its two learning rates (older rows: the head at lr), epochs."""
    return (row["model"], row["task"], row["mode"], row["seed"], row["lr"], row.get("head_lr") or row["lr"],
            row["epochs"])  # fmt: skip


def _current(row: dict[str, Any]) -> bool:
    """The row was trained at its mode's current default learning rates (for its model's width) and epochs."""
    mode = MODES[row["mode"]]
    task = "classification" if row["task"] == "bbc" else "ner"
    body = mode.default_lr(task, HIDDEN[row["model"]])
    head = mode.head_lr.for_task(task) if mode.head_lr is not None else body
    return bool(row["lr"] == body and (row.get("head_lr") or row["lr"]) == head
                and row["epochs"] == DEFAULT_EPOCHS)  # fmt: skip


def measure(args: argparse.Namespace) -> None:
    model = MODELS[args.model]()
    from transformers import AutoConfig

    layer = AutoConfig.from_pretrained(model).num_hidden_layers // 2
    done = {_key(r) for r in RUNS.rows()}
    with tempfile.TemporaryDirectory(prefix="embrecycle-default-lrs-") as tmp:
        work = Path(tmp)
        files = {"bbc": prepare_bbc(work), "wnut": prepare_wnut(work)}
        for task in args.tasks.split(","):
            for name, lr in [(m, x) for m in args.modes.split(",") for x in _rates(args.lr)]:
                mode = MODES[name]
                train_f, dev_f = files[task]
                cfg = TrainConfig(
                    task="classification" if task == "bbc" else "ner",
                    model=model,
                    layer=layer,
                    train=str(train_f),
                    dev=str(dev_f),
                    out=str(work / "runs" / f"{task}-{name}-{lr or 'default'}"),
                    cache=str(work / f"cache-{task}"),
                    upper=mode.upper if not mode.from_text else "full",
                    baseline=mode.baseline,
                    seed=args.seed,
                    max_length=CLS_MAX_LEN if task == "bbc" else None,
                    precision=args.precision,
                    lr=lr,
                    **({"epochs": args.epochs} if args.epochs else {}),
                )
                key = (args.model, task, name, args.seed, cfg.learning_rate, cfg.head_learning_rate, cfg.epochs)
                if key in done:
                    print(f"kept: {args.model} {task} {name}", flush=True)
                    continue
                r = train(cfg, progress=False)
                row = {
                    "model": args.model,
                    "task": task,
                    "mode": name,
                    "seed": args.seed,
                    "layer": cfg.mode.layer_for(layer),
                    "lr": r.lr,
                    "head_lr": r.head_lr,
                    "metric": r.primary_metric,
                    "best": r.best.get(r.primary_metric),
                    "curve": [h.get(r.primary_metric) for h in r.history],  # dev score per evaluation
                    "final_loss": sum(r.losses[-20:]) / max(1, len(r.losses[-20:])),
                    "constant": r.constant_score,
                    "chance": r.chance_score,
                    "learned_nothing": r.learned_nothing,
                    "epochs": cfg.epochs,
                    "train_examples": r.train_examples,
                    "dev_examples": r.dev_examples,
                    "train_seconds": r.train_seconds,
                    "precision": r.precision,
                    "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
                }
                RUNS.keep(row)


def _table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| model | precision | task | mode | lr | head lr | dev score | constant | chance | margin | learned |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        margin = r["best"] - max(r["constant"], r["chance"])
        verdict = "clearly" if margin >= CLEARLY else ("no" if r["learned_nothing"] else "barely")
        lines.append(
            f"| {r['model']} | {r.get('precision', '?')} | {r['task']} | {r['mode']} | {r['lr']:g} | "
            f"{r.get('head_lr') or r['lr']:g} | "
            f"{r['best']:.4f} | {r['constant']:.4f} | {r['chance']:.4f} | {margin:+.4f} | {verdict} |"
        )
    return lines


def report() -> None:
    kept = RUNS.rows()
    rows = [r for r in kept if _current(r)]
    earlier = [r for r in kept if not _current(r)]
    ok = [r for r in rows if r["best"] - max(r["constant"], r["chance"]) >= CLEARLY]
    lines = [
        "# Do the default learning rates learn?",
        "",
        f"Machine: {platform.platform()}, torch {torch.__version__}; generated "
        f"{datetime.now(UTC).isoformat(timespec='seconds')} by `benchmarks/default_lrs.py`.",
        "",
        "Every mode at its default learning rate and every other setting at its default (3 epochs, batch 32), "
        "cut at k = N/2, on tasks the defaults were not chosen on: BBC News topics (400 training / 200 dev "
        "articles, first 128 tokens, macro-F1) and WNUT-16 tweets (1,500 / 300 sentences, entity F1). "
        "'constant': the most frequent training label for every document (NER: O everywhere); 'chance': the "
        "higher of that and the run's own predictions shuffled among the dev documents (95th percentile). "
        f"'clearly' means at least {CLEARLY} above both. 'precision': what `auto` chose on the machine that "
        "ran the row (bf16 on CPUs with native bf16 units, else fp32).",
        "",
        f"**{len(ok)} of {len(rows)} runs at the current defaults learn clearly.**",
        "",
        *_table(rows),
    ]
    if earlier:
        lines += [
            "",
            "## Other rates and epochs",
            "",
            "Runs at learning rates or epochs that are not a mode's current default: earlier defaults and probes "
            "(the evidence for a change):",
            "",
            *_table(earlier),
        ]
    (RESULTS / "default_lrs.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (RESULTS / "default_lrs.json").write_text(
        json.dumps({"rows": rows, "earlier": earlier, "clearly": CLEARLY}, indent=2) + "\n"
    )
    print("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
