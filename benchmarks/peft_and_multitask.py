"""Parameter-efficient upper layers and many tasks over one cache, side by side in one process.

Part 1 (accuracy and cost per mode): MiniLM-L6 cut at k = 3 of 6 on sci-cite
(classification, macro-F1) and bc5cdr (NER, entity F1) from ``../shared/data``.
Full fine-tuning, recycling with the upper layers trained (``full``), with LoRA
and with bottleneck adapters on the upper layers; same head, loop, schedule,
epochs, batches and seed. Reports the best dev score of each mode's
learning-rate sweep, seconds per epoch, trainable parameters and the size of
the run directory's weights.

Part 2 (multi-task inference): T = 1, 3, 5 LoRA task models trained on one
sci-cite cache predict the same cached documents in one shared pass
(:class:`embrecycle.multitask.TaskSet`) against T separate full models (each
run exported with ``embrecycle export``, loaded with transformers, tokenizing
and running all layers, as a user without recycling would). Also the memory
the T models hold.

Run: ``make bench-peft`` or ``.venv/bin/python benchmarks/peft_and_multitask.py [--quick]``.
Writes ``benchmarks/results/peft_and_multitask.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
import transformers

import paper_datasets
from embrecycle.batching import eval_batches
from embrecycle.bench import environment, write_results
from embrecycle.bench.tables import markdown_table
from embrecycle.bench.timing import alternate
from embrecycle.data.readers import read_examples
from embrecycle.export import export_run
from embrecycle.multitask import TaskSet
from embrecycle.offline_models import minilm_l6_path
from embrecycle.tokenization import encode_documents, pad_ids
from embrecycle.training import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ("sci-cite", "bc5cdr")
# (label, baseline, upper, learning rates): each mode's sweep
MODES = [
    ("full fine-tuning", "full-finetune", "full", [1e-4, 3e-4]),
    ("recycle, upper layers", None, "full", [3e-4, 1e-3]),
    ("recycle + LoRA", None, "lora", [1e-3, 3e-3]),
    ("recycle + adapters", None, "adapter", [1e-3, 3e-3]),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny subsets, one epoch, one lr (a smoke run)")
    ap.add_argument("--train-limit", type=int, default=2000)
    ap.add_argument("--dev-limit", type=int, default=600)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--layer", type=int, default=3)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    ap.add_argument("--tasks", type=int, nargs="+", default=[1, 3, 5], help="T for the multi-task inference part")
    ap.add_argument("--multitask-layers", type=int, nargs="+", default=[3, 4], help="cuts for the multi-task part")
    ap.add_argument("--repeats", type=int, default=3, help="timed repetitions of each multi-task variant (best kept)")
    ap.add_argument("--skip-accuracy", action="store_true")
    ap.add_argument(
        "--merge", type=Path, nargs="+", help="only re-render one report from these results files (separate runs)"
    )
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    if args.quick:
        args.train_limit, args.dev_limit, args.epochs, args.tasks = 64, 32, 1, [1, 2]
    if args.merge:
        return _merge(args)
    paper_datasets.require()
    model = minilm_l6_path()
    rows: list[dict] = []  # type: ignore[type-arg]
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_accuracy:
            for name in args.datasets:
                for label, baseline, upper, lrs in MODES:
                    for lr in lrs[:1] if args.quick else lrs:
                        rows.append(_train_row(args, model, tmp, name, label, baseline, upper, lr))
        for layer in args.multitask_layers:
            rows += _multitask_rows(args, model, tmp, layer)
    env = environment() | {"args": vars(args) | {"out": str(args.out)}}
    report = _report(rows, args, env)
    stem = "peft_and_multitask_quick" if args.quick else "peft_and_multitask"
    write_results({"environment": env, "rows": rows}, args.out, stem, report)
    print(report)
    return 0


def _merge(args: argparse.Namespace) -> int:
    """One report from several results files: accuracy rows, then multi-task rows, each from its own run."""
    parts = [json.loads(p.read_text()) for p in args.merge]
    rows = [r for part in parts for r in part["rows"]]
    env = dict(parts[-1]["environment"])
    env["sources"] = [
        {"file": p.name, "date": part["environment"]["date"]} for p, part in zip(args.merge, parts, strict=True)
    ]
    first = parts[0]["environment"]["args"]
    for key in ("train_limit", "dev_limit", "epochs", "layer", "max_length", "seed", "repeats"):
        setattr(args, key, first.get(key, getattr(args, key)))
    args.repeats = max(part["environment"]["args"].get("repeats", 1) for part in parts)
    report = _report(rows, args, env)
    note = (
        "Merged from separate runs (" + ", ".join(f"{s['file']} of {s['date']}" for s in env["sources"]) + "): "
        "times compare within a table, where every row of a comparison came from the same run.\n\n"
    )
    report = report.replace(" One process: times compare only within this run.", "", 1)
    report = report.replace("## Accuracy", note + "## Accuracy", 1)
    write_results({"environment": env, "rows": rows}, args.out, "peft_and_multitask", report)
    print(report)
    return 0


def _config(args, model, tmp, name, baseline, upper, lr, out, **kw) -> TrainConfig:  # type: ignore[no-untyped-def]
    ds = paper_datasets.dataset(name)
    layer = kw.pop("layer", args.layer)
    return TrainConfig(
        task=ds.task,
        model=model,
        layer=layer,
        train=ds.train,
        dev=ds.dev,
        out=out,
        cache=f"{tmp}/cache-{name}-{layer}",
        baseline=baseline,
        upper=upper,
        epochs=kw.pop("epochs", args.epochs),
        lr=lr,
        batch_size=32,
        seed=kw.pop("seed", args.seed),
        max_length=args.max_length,
        train_limit=kw.pop("train_limit", args.train_limit),
        dev_limit=args.dev_limit,
    )


def _train_row(args, model, tmp, name, label, baseline, upper, lr) -> dict:  # type: ignore[no-untyped-def]
    out = f"{tmp}/{name}-{baseline or upper}-{lr:g}"
    r = train(_config(args, model, tmp, name, baseline, upper, lr, out), progress=False)
    metric = paper_datasets.dataset(name).metric
    row = {
        "part": "accuracy",
        "dataset": name,
        "mode": label,
        "upper": baseline or upper,
        "lr": lr,
        "score": r.best[metric],
        "metric": metric,
        "seconds_per_epoch": r.train_seconds / len(r.epoch_seconds),
        "examples_per_second": r.examples_per_second,
        "trainable_parameters": r.trainable_parameters,
        "run_weights_bytes": r.weights_bytes,
        "cache_build_seconds": r.cache_build_seconds,
    }
    print(json.dumps(row), flush=True)
    return row


def _multitask_rows(args, model, tmp, layer) -> list[dict]:  # type: ignore[type-arg]
    """T LoRA runs over one cache: shared pass vs T separate full models (exported, plain transformers)."""
    t_max = max(args.tasks)
    runs = []
    for seed in range(t_max):  # real (short) runs: the weights' values do not change the timing
        out = f"{tmp}/mt-{layer}-{seed}"
        cfg = _config(
            args, model, tmp, "sci-cite", None, "lora", 1e-3, out, epochs=1, seed=seed, train_limit=200, layer=layer
        )
        runs.append(train(cfg, progress=False).run_dir)
    docs = [e.doc for e in read_examples(paper_datasets.dataset("sci-cite").dev)][: args.dev_limit]
    cache = f"{tmp}/cache-sci-cite-{layer}"
    TaskSet.load(runs[:1]).predict(docs, cache=cache, update_cache=True)  # every document cached
    exported = [export_run(r, f"{tmp}/mt-export-{layer}-{i}").out for i, r in enumerate(runs)]
    rows = []
    for t in args.tasks:
        tasks = TaskSet.load(runs[:t])
        plain = [transformers.AutoModelForSequenceClassification.from_pretrained(d).eval() for d in exported[:t]]
        tok = transformers.AutoTokenizer.from_pretrained(exported[0])
        tasks.predict(docs[:64], cache=cache)  # warm-up
        _separate(plain[:1], tok, docs[:64])
        variants = {
            "shared": lambda tasks=tasks: tasks.predict(docs, cache=cache),
            "separate": lambda plain=plain, tok=tok: _separate(plain, tok, docs),
        }
        times, last = alternate(variants, args.repeats)  # best of each: the machine is shared and noisy
        assert all(p.hits == len(docs) for p in last["shared"].values())
        shared_s, separate_s = min(times["shared"]), min(times["separate"])
        row = {
            "part": "multitask",
            "layer": layer,
            "tasks": t,
            "documents": len(docs),
            "shared_seconds": shared_s,
            "separate_seconds": separate_s,
            "speedup": separate_s / shared_s,
            "shared_parameter_bytes": tasks.parameter_bytes(),
            "separate_parameter_bytes": sum(_param_bytes(m) for m in plain),
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


@torch.inference_mode()
def _separate(models, tokenizer, docs) -> None:  # type: ignore[no-untyped-def]
    """What a user without recycling runs: each task model tokenizes and runs all layers."""
    for model in models:
        enc = encode_documents(tokenizer, docs, 128)
        lengths = np.array([len(e.input_ids) for e in enc])
        for batch in eval_batches(lengths, 64):
            ids, mask = pad_ids([enc[i] for i in batch], tokenizer.pad_token_id or 0)
            model(input_ids=ids, attention_mask=mask).logits.softmax(-1)


def _param_bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


MULTITASK_COLUMNS = [
    "cut k", "tasks T", "shared pass (s)", "T separate full models (s)", "speed-up", "memory shared", "memory separate"
]  # fmt: skip


def _report(rows: list[dict], args: argparse.Namespace, env: dict) -> str:  # type: ignore[type-arg]
    lines = [
        f"# Parameter-efficient recycling and many tasks over one cache (MiniLM-L6, k = {args.layer} of 6)",
        "",
        f"Machine: {env['machine']}, {env['threads']} threads; torch {env['torch']}, transformers "
        f"{env['transformers']}; {env['date']}. One process: times compare only within this run.",
        "",
    ]
    acc = [r for r in rows if r["part"] == "accuracy"]
    if acc:
        lines += [
            "## Accuracy and training cost per mode",
            "",
            f"{args.train_limit} training / {args.dev_limit} dev examples (seeded subsets), {args.epochs} epochs, "
            f"batch 32, max length {args.max_length}, seed {args.seed}; best dev score of each mode's learning-rate "
            "sweep. Retention is against full fine-tuning's best; speed-up is full fine-tuning's seconds per epoch "
            "over the mode's (evaluation and the one-off cache build excluded). Weights: the run directory's "
            "`model.safetensors`.",
            "",
        ]
        best_rows = []
        for name in dict.fromkeys(r["dataset"] for r in acc):
            ds = [r for r in acc if r["dataset"] == name]
            best = {}
            for r in ds:
                if r["mode"] not in best or r["score"] > best[r["mode"]]["score"]:
                    best[r["mode"]] = r
            ref = best.get("full fine-tuning")
            ref_epoch = np.mean([r["seconds_per_epoch"] for r in ds if r["mode"] == "full fine-tuning"]) if ref else 0
            for mode, r in best.items():
                epoch = np.mean([x["seconds_per_epoch"] for x in ds if x["mode"] == mode])
                ret = f"{r['score'] / ref['score']:.1%}" if ref else "n/a"
                speed = f"{ref_epoch / epoch:.2f}x" if ref else "n/a"
                best_rows.append(
                    [
                        name,
                        mode,
                        f"{r['lr']:g}",
                        f"{r['score']:.4f}",
                        ret,
                        f"{epoch:.1f}",
                        speed,
                        f"{r['trainable_parameters']:,}",
                        f"{r['run_weights_bytes'] / 1e6:.2f} MB",
                    ]
                )
        header = ["dataset", "mode", "best lr", "score", "retention", "s/epoch", "speed-up", "trainable params"]
        lines += markdown_table([*header, "weights"], best_rows)
        every = [[r["dataset"], r["mode"], f"{r['lr']:g}", f"{r['score']:.4f}"] for r in acc]
        lines += ["", "Every learning rate:", "", *markdown_table(["dataset", "mode", "lr", "score"], every), ""]
    mt = [r for r in rows if r["part"] == "multitask"]
    if mt:
        lines += [
            "## Many tasks over the same cached documents",
            "",
            f"{mt[0]['documents']} sci-cite dev documents, all in the cache. Shared pass: `TaskSet` of T LoRA runs "
            "(each document's layer-k states read once, the frozen base held once, every task's upper layers + "
            "LoRA + head run on them; cached documents are not tokenized). Separate: T exported full models "
            "(LoRA merged, plain transformers), each tokenizing and running all 6 layers. Same batching (64, "
            f"length-sorted). Best of {args.repeats} alternating repetitions. Memory: distinct parameter and buffer "
            "bytes held.",
            "",
            *markdown_table(
                MULTITASK_COLUMNS,
                [
                    [
                        r["layer"],
                        r["tasks"],
                        f"{r['shared_seconds']:.2f}",
                        f"{r['separate_seconds']:.2f}",
                        f"{r['speedup']:.2f}x",
                        f"{r['shared_parameter_bytes'] / 1e6:.1f} MB",
                        f"{r['separate_parameter_bytes'] / 1e6:.1f} MB",
                    ]
                    for r in mt
                ],
            ),
            "",
            "Compute ceiling of the shared pass over cached documents: N/(N-k) = 2x at k = 3 of 6, 3x at k = 4 "
            "(every task still runs layers k+1..6, with LoRA unmerged so the base stays shared); what it saves "
            "beyond that is tokenization.",
            "",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
