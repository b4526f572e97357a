"""Hardware efficiency (issue 18): embrecycle against the Hugging Face ``Trainer``, fp32 and bf16, on this machine.

On MiniLM-L6 or MPNet-base, sci-cite (``../shared/data``), the same seeded 2,000 training / 500 dev examples,
2 epochs, batch 32, max length 128, AdamW (weight decay 0.01) with 10% linear warmup then linear decay:

* ``trainer-fp32`` / ``trainer-bf16``: ``transformers.Trainer`` fine-tuning ``AutoModelForSequenceClassification``
  with its defaults (float32), and with ``bf16=True``; padding to the longest in each (random) batch;
* ``full-fp32`` / ``full-bf16``: embrecycle's full fine-tuning baseline;
* ``recycle-fp32`` / ``recycle-bf16``: recycling at k = N/2, upper layers trained in full;
* ``lora-bf16``: recycling at k = N/2 with LoRA above the cut.

Learning rates (from benchmarks/results/recycle_vs_finetune.md and peft_and_multitask.md, sci-cite, the best of
each sweep): 1e-4 for full fine-tuning (Trainer and ours), 3e-4 for recycling, 3e-3 for LoRA.

Per seed every method runs in turn (the order flips every other seed), after one short warm-up of each method.
Every finished run is appended to ``benchmarks/results/hardware/<model>/runs.jsonl``; a restarted run skips the
runs already there. The same process also times the matmul peak (fp32, bf16), counts the FLOPs of every
training step from the padded batches, and times inference on the cached dev documents (one recycled run, and
the 5-task shared pass against 5 separate plain transformers models). ``--report`` renders
``benchmarks/results/hardware.{md,json}`` from every model's runs.

Run: ``.venv/bin/python benchmarks/hardware.py --model minilm-l6`` (then ``--report``);
``--quick`` is a smoke run (tiny subsets, 1 seed, its own ``runs-quick.jsonl``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from embrecycle import TaskSet, export_run, load
from embrecycle.batching import train_batches
from embrecycle.bench import environment, write_results
from embrecycle.bench.tables import markdown_table
from embrecycle.bench.timing import OtherCpu
from embrecycle.hardware import autocast, configure_threads, resolve_hardware
from embrecycle.offline_models import minilm_l6_path, mpnet_base_path
from embrecycle.tokenization import encode_documents
from embrecycle.training import TrainConfig, train
from embrecycle.training.data import read_data

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DATA = ROOT.parent / "shared" / "data" / "sci-cite"
MODELS: dict[str, Callable[[], str]] = {"minilm-l6": minilm_l6_path, "mpnet-base": mpnet_base_path}
METHODS = ("trainer-fp32", "trainer-bf16", "full-fp32", "full-bf16", "recycle-fp32", "recycle-bf16", "lora-bf16")
SEED_METHODS = ("full-fp32", "full-bf16", "recycle-fp32", "recycle-bf16")
LR = {"trainer": 1e-4, "full": 1e-4, "recycle": 3e-4, "lora": 3e-3}
LORA_R = 8
N_TASKS = 5
# What embrecycle's rows ran: runs of another revision are not reused, and the report shows the latest one's rows.
CODE_REVISION = 2
CODE_REVISIONS = {
    1: "torch's dropout, per-tensor AdamW, LoRA kept apart at prediction (embrecycle before FastDropout)",
    2: "embrecycle.dropout.FastDropout on the CPU (a third of torch's mask cost), fused AdamW, LoRA merged at "
    "prediction (`load`/`TaskSet.load` with merge_lora=True; the shared pass is also timed with it False)",
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=sorted(MODELS), default="minilm-l6")
    ap.add_argument("--seeds", default="1,2,3", help="comma-separated seeds of the four seed rows")
    ap.add_argument(
        "--other-seeds", default=None, help="seeds of the Trainer and LoRA rows (default: the first seed only)"
    )
    ap.add_argument("--train-limit", type=int, default=2000)
    ap.add_argument("--dev-limit", type=int, default=500)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ", ".join(METHODS))
    ap.add_argument("--quick", action="store_true", help="tiny subsets, 1 epoch, 1 seed (a smoke run)")
    ap.add_argument("--no-inference", action="store_true", help="skip the inference measurement")
    ap.add_argument(
        "--inference-docs", type=int, default=250, help="cached dev documents each inference variant predicts"
    )
    ap.add_argument("--inference-repeats", type=int, default=2, help="timed passes per inference variant (best kept)")
    ap.add_argument("--no-profile", action="store_true", help="skip the profile of recycled bf16 steps")
    ap.add_argument("--work", type=Path, default=None, help="run directories and caches (default: a /tmp folder)")
    ap.add_argument("--report", action="store_true", help="only render hardware.{md,json} from the runs kept")
    args = ap.parse_args()
    if args.report:
        report()
        return 0
    if args.quick:
        args.train_limit, args.dev_limit, args.epochs, args.seeds = 96, 64, 1, "1"
    seeds = [int(s) for s in args.seeds.split(",")]
    other_seeds = [int(s) for s in args.other_seeds.split(",")] if args.other_seeds else seeds[:1]
    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        ap.error(f"unknown methods {unknown}")
    configure_threads()
    bench = Bench(args)
    bench.run(methods, seeds, other_seeds)
    return 0


# ---------------------------------------------------------------- the measurement


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.model_path = MODELS[args.model]()
        from transformers import AutoConfig

        cfg = AutoConfig.from_pretrained(self.model_path)
        self.n_layers, self.hidden, self.inter = cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size
        self.k = self.n_layers // 2
        self.dir = RESULTS / "hardware" / args.model
        self.dir.mkdir(parents=True, exist_ok=True)
        self.runs_file = self.dir / ("runs-quick.jsonl" if args.quick else "runs.jsonl")
        self.work = args.work or Path(tempfile.gettempdir()) / "embrecycle-hardware" / (
            args.model + ("-quick" if args.quick else "")
        )
        self.work.mkdir(parents=True, exist_ok=True)

    # settings that make two runs comparable; a kept run with other settings is not reused
    def settings(self) -> dict[str, Any]:
        a = self.args
        return {
            "train_limit": a.train_limit,
            "dev_limit": a.dev_limit,
            "epochs": a.epochs,
            "batch_size": a.batch_size,
            "max_length": a.max_length,
            "layer": self.k,
            "code": CODE_REVISION,
        }

    def kept(self) -> list[dict[str, Any]]:
        if not self.runs_file.exists():
            return []
        rows = [json.loads(line) for line in self.runs_file.read_text().splitlines() if line.strip()]
        return [r for r in rows if r.get("settings") == self.settings()]

    def append(self, row: dict[str, Any]) -> None:
        row = {"model": self.args.model, "settings": self.settings(), **row}
        row["timestamp"] = datetime.now(UTC).isoformat(timespec="seconds")
        with self.runs_file.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        shown = {k: v for k, v in row.items() if not isinstance(v, list | dict)}
        print(json.dumps(shown), flush=True)

    def run(self, methods: list[str], seeds: list[int], other_seeds: list[int]) -> None:
        self.append({"kind": "peak", **matmul_peaks(self.hidden, self.inter)})
        self.warm_up(methods)
        done = {(r["method"], r["seed"]) for r in self.kept() if r.get("kind") == "train"}
        for i, seed in enumerate(sorted(set(seeds) | set(other_seeds))):
            order = [m for m in methods if (m in SEED_METHODS and seed in seeds) or (seed in other_seeds)]
            order = order if i % 2 == 0 else order[::-1]
            for method in order:
                if (method, seed) in done:
                    print(f"kept: {method} seed {seed}", flush=True)
                    continue
                self.append(self.train_once(method, seed, self.args.train_limit, self.args.dev_limit))
            if i == 0:
                if not self.args.no_inference and not any(r.get("kind") == "inference" for r in self.kept()):
                    self.append(self.inference(seed))
                if not self.args.no_profile and not any(r.get("kind") == "profile" for r in self.kept()):
                    self.append(self.profile(seed))
        self.append({"kind": "peak", **matmul_peaks(self.hidden, self.inter)})

    def warm_up(self, methods: list[str]) -> None:
        with tempfile.TemporaryDirectory(dir=self.work) as tmp:
            for method in methods:
                t0 = time.perf_counter()
                self.train_once(method, 0, 64, 32, epochs=1, work=Path(tmp))
                print(f"warm-up {method}: {time.perf_counter() - t0:.1f}s", flush=True)

    def config(
        self, method: str, seed: int, train_limit: int, dev_limit: int, epochs: int, work: Path, out: Path
    ) -> TrainConfig:
        kind, precision = method.split("-")
        a = self.args
        return TrainConfig(
            task="classification",
            model=self.model_path,
            layer=self.k,
            train=str(DATA / "train.jsonl"),
            dev=str(DATA / "dev.jsonl"),
            out=str(out),
            cache=str(work / f"cache-k{self.k}-{precision}"),
            baseline="full-finetune" if kind == "full" else None,
            upper="lora" if kind == "lora" else "full",
            upper_options={"lora_r": LORA_R, "lora_alpha": 2.0 * LORA_R},
            epochs=epochs,
            lr=LR[kind],
            batch_size=a.batch_size,
            seed=seed,
            max_length=a.max_length,
            train_limit=train_limit,
            dev_limit=dev_limit,
            device="cpu",
            precision=precision,
        )

    def train_once(
        self, method: str, seed: int, train_limit: int, dev_limit: int, epochs: int | None = None,
        work: Path | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        epochs = epochs or self.args.epochs
        work = work or self.work
        out = work / "runs" / f"{method}-s{seed}"
        if out.exists():
            shutil.rmtree(out)
        cfg = self.config(method, seed, train_limit, dev_limit, epochs, work, out)
        kind, precision = method.split("-")
        with OtherCpu() as other:
            row = self._trainer(cfg, precision) if kind == "trainer" else self._ours(cfg, kind)
        layers = self.n_layers if kind in ("trainer", "full") else self.n_layers - self.k
        flops = [self.step_flops(layers, tokens, length) for tokens, length in row.pop("batches")]
        steps = row["step_seconds"]
        per_step = sorted(range(len(steps)), key=lambda j: flops[j] / steps[j])
        row |= {
            "kind": "train",
            "method": method,
            "precision": precision,
            "seed": seed,
            "lr": cfg.lr,
            "epochs": epochs,
            "seconds_per_epoch": row["train_seconds"] / epochs,
            "padded_tokens": int(sum(row["step_tokens"])),
            "counted_layers": layers,
            "step_flops_total": float(sum(flops)),
            # FLOP/s over the whole of training (sum of FLOPs / sum of step seconds) ...
            "achieved_flops": float(sum(flops) / sum(steps)) if steps else 0.0,
            # ... and of the median step (by FLOP/s)
            "median_step_flops": float(flops[per_step[len(per_step) // 2]] / steps[per_step[len(per_step) // 2]])
            if steps
            else 0.0,
            "other_cpu_cores": other.cores,
            "torch_threads": torch.get_num_threads(),
        }
        return row

    def step_flops(self, layers: int, tokens: int, length: int) -> float:
        """Matmul FLOPs of one training step over ``layers`` encoder layers (training = 3 x forward)."""
        h, i = self.hidden, self.inter
        per_token = 2 * (4 * h * h + 2 * h * i) + 2 * 2 * length * h
        return 3.0 * layers * tokens * per_token

    def _ours(self, cfg: TrainConfig, kind: str) -> dict[str, Any]:
        r = train(cfg, progress=False)
        # the padded batches the loop ran, step by step (same lengths, same seeded bucketing as embrecycle.fit)
        data = read_data(cfg)
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(cfg.model)
        lengths = np.array([len(e.input_ids) for e in encode_documents(tok, [x.doc for x in data.train], 128)])
        assert cfg.max_length == 128
        batches = [
            (len(b) * int(lengths[b].max()), int(lengths[b].max()))
            for epoch in range(cfg.epochs)
            for b in train_batches(lengths, cfg.batch_size, cfg.seed, epoch)
        ]
        if len(batches) != len(r.step_seconds):
            raise RuntimeError(f"{len(batches)} batches counted, {len(r.step_seconds)} steps timed")
        return {
            "train_seconds": r.train_seconds,
            "epoch_seconds": r.epoch_seconds,
            "examples_per_second": r.examples_per_second,
            "best": r.best,
            "macro_f1": r.best["macro_f1"],
            "history": r.history,
            "step_seconds": r.step_seconds,
            "step_tokens": [t for t, _ in batches],
            "batches": batches,
            "cache_build_seconds": r.cache_build_seconds if kind != "full" else None,
            "eval_seconds": r.eval_seconds,
            "trainable_parameters": r.trainable_parameters,
            "train_examples": r.train_examples,
            "dev_examples": r.dev_examples,
            "run_precision": r.precision,
            "device": r.device,
            "threads": r.threads,
        }

    def _trainer(self, cfg: TrainConfig, precision: str) -> dict[str, Any]:
        from transformers import (
            AutoModelForSequenceClassification,
            AutoTokenizer,
            DataCollatorWithPadding,
            Trainer,
            TrainerCallback,
            TrainingArguments,
            set_seed,
        )

        data = read_data(cfg)  # embrecycle's own seeded subsets: the very same examples
        labels = data.task.labels
        label2id = {lab: j for j, lab in enumerate(labels)}
        tok = AutoTokenizer.from_pretrained(cfg.model)

        def dataset(examples: list[Any]) -> list[dict[str, Any]]:
            enc = tok([e.doc for e in examples], truncation=True, max_length=cfg.max_length)
            return [
                {"input_ids": ids, "attention_mask": m, "labels": label2id[str(e.label)]}
                for ids, m, e in zip(enc["input_ids"], enc["attention_mask"], examples, strict=True)
            ]

        train_ds, dev_ds = dataset(data.train), dataset(data.dev)
        set_seed(cfg.seed)
        model = AutoModelForSequenceClassification.from_pretrained(
            cfg.model, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id=label2id
        )
        collate = DataCollatorWithPadding(tok)
        state = {"training": False, "t_epoch": 0.0, "t_step": 0.0}
        epoch_seconds: list[float] = []
        step_seconds: list[float] = []
        batches: list[tuple[int, int]] = []

        def counting_collate(features: list[dict[str, Any]]) -> Any:
            batch = collate(features)
            if state["training"]:
                batches.append((int(batch["input_ids"].numel()), int(batch["input_ids"].shape[1])))
            return batch

        class Timer(TrainerCallback):  # type: ignore[misc]
            def on_epoch_begin(self, args: Any, st: Any, control: Any, **kw: Any) -> None:
                state["training"], state["t_epoch"] = True, time.perf_counter()

            def on_epoch_end(self, args: Any, st: Any, control: Any, **kw: Any) -> None:
                epoch_seconds.append(time.perf_counter() - state["t_epoch"])
                state["training"] = False  # evaluation follows on_epoch_end: not timed, batches not counted

            def on_step_begin(self, args: Any, st: Any, control: Any, **kw: Any) -> None:
                state["t_step"] = time.perf_counter()

            def on_step_end(self, args: Any, st: Any, control: Any, **kw: Any) -> None:
                step_seconds.append(time.perf_counter() - state["t_step"])

        def metrics(pred: Any) -> dict[str, float]:
            y = np.asarray(pred.label_ids)
            p = np.asarray(pred.predictions).argmax(-1)
            return {"macro_f1": macro_f1(y, p, len(labels)), "accuracy": float((y == p).mean())}

        targs = TrainingArguments(
            output_dir=str(Path(cfg.out) / "trainer"),
            per_device_train_batch_size=cfg.batch_size,
            per_device_eval_batch_size=64,
            num_train_epochs=cfg.epochs,
            learning_rate=cfg.lr,
            warmup_steps=0.1,  # transformers 5: a float in [0, 1) is the warmup ratio (ceil of 10% of the steps)
            weight_decay=0.01,
            bf16=precision == "bf16",
            eval_strategy="epoch",
            save_strategy="no",
            report_to=[],
            seed=cfg.seed,
            dataloader_num_workers=0,
            use_cpu=True,
            logging_strategy="no",
            disable_tqdm=True,
        )
        trainer = Trainer(
            model=model,
            args=targs,
            train_dataset=train_ds,
            eval_dataset=dev_ds,
            data_collator=counting_collate,
            compute_metrics=metrics,
            callbacks=[Timer()],
        )
        t0 = time.perf_counter()
        trainer.train()
        total = time.perf_counter() - t0
        history = [
            {"epoch": round(h["epoch"]), "macro_f1": h["eval_macro_f1"], "accuracy": h["eval_accuracy"]}
            for h in trainer.state.log_history
            if "eval_macro_f1" in h
        ]
        best = max(history, key=lambda h: h["macro_f1"])
        seconds = sum(epoch_seconds)
        seen = len(train_ds) * cfg.epochs
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        return {
            "train_seconds": seconds,
            "epoch_seconds": epoch_seconds,
            "examples_per_second": seen / seconds,
            "best": best,
            "macro_f1": best["macro_f1"],
            "history": history,
            "step_seconds": step_seconds,
            "step_tokens": [t for t, _ in batches],
            "batches": batches,
            "cache_build_seconds": None,
            "eval_seconds": total - seconds,
            "trainable_parameters": trainable,
            "train_examples": len(train_ds),
            "dev_examples": len(dev_ds),
            "run_precision": precision,
            "device": str(targs.device),
            "threads": torch.get_num_threads(),
            "optimizer": type(
                trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer
            ).__name__,
            "optim": str(targs.optim),
        }

    # ------------------------------------------------------------ inference

    def inference(self, seed: int) -> dict[str, Any]:
        """Cached-document prediction (one recycled run) and the 5-task shared pass vs 5 separate full models."""
        a = self.args
        runs: dict[str, list[Path]] = {}
        exported: dict[str, Path] = {}
        docs: list[str] = []
        for precision in ("fp32", "bf16"):
            base = self.work / "inference" / precision
            if base.exists():
                shutil.rmtree(base)
            # one quick LoRA-above-the-cut run (1 epoch, 200 examples) whose dev set is this seed's dev documents,
            # copied under 5 names: the shared pass computes the same as 5 different tasks would
            cfg = self.config(
                f"lora-{precision}", seed, min(200, a.train_limit), a.dev_limit, 1, self.work, base / "t0"
            )
            train(cfg, progress=False)
            docs = [e.doc for e in read_data(cfg).dev][: a.inference_docs]
            runs[precision] = [base / "t0"]
            for j in range(1, N_TASKS):
                shutil.copytree(base / "t0", base / f"t{j}")
                runs[precision].append(base / f"t{j}")
            exported[precision] = base / "exported"
            export_run(base / "t0", exported[precision])
        cache = {p: str(self.work / f"cache-k{self.k}-{p}") for p in ("fp32", "bf16")}
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        single = {p: load(runs[p][0], device="cpu", precision=p) for p in ("fp32", "bf16")}
        shared = {p: TaskSet.load(runs[p], device="cpu", precision=p) for p in ("fp32", "bf16")}
        apart = {p: TaskSet.load(runs[p], device="cpu", precision=p, merge_lora=False) for p in ("fp32", "bf16")}
        plain = {
            p: [AutoModelForSequenceClassification.from_pretrained(exported[p]).eval() for _ in range(N_TASKS)]
            for p in ("fp32", "bf16")
        }
        tok = AutoTokenizer.from_pretrained(exported["fp32"])
        hw = {p: resolve_hardware("cpu", p) for p in ("fp32", "bf16")}

        def separate(p: str) -> Callable[[], Any]:
            def go() -> Any:
                out = []
                for m in plain[p]:  # each model tokenizes and runs all its layers, as separate deployments do
                    enc = tok(docs, truncation=True, max_length=a.max_length)
                    order = np.argsort([len(x) for x in enc["input_ids"]], kind="stable")
                    with torch.inference_mode(), autocast(hw[p]):
                        for s in range(0, len(order), 64):
                            rows = [{k: enc[k][j] for k in ("input_ids", "attention_mask")} for j in order[s : s + 64]]
                            batch = tok.pad(rows, return_tensors="pt")
                            out.append(m(**batch).logits.float())
                return out

            return go

        variants: dict[str, Callable[[], Any]] = {}
        for p in ("fp32", "bf16"):
            variants[f"single-{p}"] = lambda p=p: single[p].predict(docs, cache=cache[p])
            variants[f"shared5-{p}"] = lambda p=p: shared[p].predict(docs, cache=cache[p])
            variants[f"apart5-{p}"] = lambda p=p: apart[p].predict(docs, cache=cache[p])
            variants[f"separate5-{p}"] = separate(p)
            variants[f"plain1-{p}"] = lambda p=p: separate_one(plain[p][0], tok, docs, a.max_length, hw[p])
        full_docs = docs
        docs = full_docs[:32]
        for fn in variants.values():  # warm-up on a slice: kernels and allocators, not the whole measurement again
            fn()
        docs = full_docs
        seconds: dict[str, list[float]] = {k: [] for k in variants}
        hits = {}
        with OtherCpu() as other:
            for _ in range(a.inference_repeats):
                for name, fn in variants.items():
                    t0 = time.perf_counter()
                    res = fn()
                    seconds[name].append(time.perf_counter() - t0)
                    if name.startswith("single"):
                        hits[name] = res.hits
        return {
            "kind": "inference",
            "seed": seed,
            "documents": len(docs),
            "warm_up_documents": 32,
            "tasks": N_TASKS,
            "seconds": seconds,
            "best_seconds": {k: min(v) for k, v in seconds.items()},
            "cache_hits": hits,
            "parameter_bytes": {
                "shared5-merged": shared["fp32"].parameter_bytes(),
                "shared5-apart": apart["fp32"].parameter_bytes(),
                # the 5 tasks are copies of one run, so their merged upper layers are equal and held once: distinct
                # LoRA tasks would each hold their own (this many bytes each)
                "upper_layers": sum(
                    t.numel() * t.element_size()
                    for layer in single["fp32"].model.split.upper_layers()
                    for t in [*layer.parameters(), *layer.buffers()]
                ),
                "separate5": sum(
                    sum(t.numel() * t.element_size() for t in m.state_dict().values()) for m in plain["fp32"]
                ),
            },
            "other_cpu_cores": other.cores,
        }

    # ------------------------------------------------------------ profile

    def profile(self, seed: int) -> dict[str, Any]:
        """Where the time of recycled bf16 training steps goes (torch profiler, ops by self CPU time)."""
        from torch.profiler import ProfilerActivity, profile

        out = self.work / "profile"
        if out.exists():
            shutil.rmtree(out)
        cfg = self.config("recycle-bf16", seed, min(320, self.args.train_limit), 32, 1, self.work, out)
        train(cfg, progress=False)  # the cache holds these documents now: the profiled run is steps and eval
        shutil.rmtree(out)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            r = train(cfg, progress=False)
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30)
        name = "profile-quick.txt" if self.args.quick else "profile-recycle-bf16.txt"
        (self.dir / name).write_text(table + "\n", encoding="utf-8")
        total = sum(e.self_cpu_time_total for e in prof.key_averages())
        top = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:15]
        return {
            "kind": "profile",
            "seed": seed,
            "train_examples": r.train_examples,
            "profiled_train_seconds": r.train_seconds,
            "eval_seconds": r.eval_seconds,
            "top_ops": [{"op": e.key, "self_cpu_share": e.self_cpu_time_total / total, "calls": e.count} for e in top],
        }


def separate_one(model: Any, tok: Any, docs: list[str], max_length: int, hw: Any) -> Any:
    enc = tok(docs, truncation=True, max_length=max_length)
    order = np.argsort([len(x) for x in enc["input_ids"]], kind="stable")
    out = []
    with torch.inference_mode(), autocast(hw):
        for s in range(0, len(order), 64):
            rows = [{k: enc[k][j] for k in ("input_ids", "attention_mask")} for j in order[s : s + 64]]
            out.append(model(**tok.pad(rows, return_tensors="pt")).logits.float())
    return out


def macro_f1(y: np.ndarray, p: np.ndarray, n: int) -> float:
    f1s = []
    for c in range(n):
        tp = float(((p == c) & (y == c)).sum())
        fp = float(((p == c) & (y != c)).sum())
        fn = float(((p != c) & (y == c)).sum())
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return float(np.mean(f1s))


def matmul_peaks(hidden: int, inter: int, repeats: int = 7) -> dict[str, Any]:
    """Best FLOP/s of large matmuls in fp32 and bf16 (native bf16 tensors, and fp32 tensors under autocast)."""
    shapes = {"4096xh@hx4h": (4096, hidden, 4 * hidden), "2048^3": (2048, 2048, 2048)}
    out: dict[str, Any] = {}
    for label, (m, k, n) in shapes.items():
        for dtype in ("fp32", "bf16", "bf16-autocast"):
            real = torch.float32 if dtype != "bf16" else torch.bfloat16
            a, b = torch.randn(m, k, dtype=real), torch.randn(k, n, dtype=real)
            ctx: Callable[[], Any] = (
                (lambda: torch.autocast("cpu", dtype=torch.bfloat16))
                if dtype == "bf16-autocast"
                else contextlib.nullcontext
            )
            best = math.inf
            with ctx():
                torch.mm(a, b)
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    torch.mm(a, b)
                    best = min(best, time.perf_counter() - t0)
            out[f"{dtype} {label}"] = 2.0 * m * k * n / best
    peak = {d: max(v for key, v in out.items() if key.split(" ")[0] == d) for d in ("fp32", "bf16", "bf16-autocast")}
    return {"matmuls": out, "peak": peak, "threads": torch.get_num_threads()}


# ---------------------------------------------------------------- the report


def _ms(xs: list[float], f: str = ".4f") -> str:
    if not xs:
        return "–"
    if len(xs) == 1:
        return f"{xs[0]:{f}}"
    return f"{statistics.mean(xs):{f}} ± {statistics.stdev(xs):{f}}"


def _mean(xs: list[float]) -> float:
    return statistics.mean(xs) if xs else float("nan")


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**met**" if ok else "**not met**")


def report() -> None:
    models: dict[str, Any] = {}
    lines = [
        "# Hardware efficiency: embrecycle vs the Hugging Face Trainer, fp32 and bf16 (issue 18)",
        "",
        "sci-cite, embrecycle's seeded subsets (the Trainer gets the very same examples), batch 32, max length 128, "
        "AdamW with weight decay 0.01, linear warmup over 10% of the steps then linear decay, evaluation on dev at "
        "every epoch (score: the best epoch's macro-F1). Learning rates from the repo's sweeps on sci-cite "
        "(benchmarks/results/recycle_vs_finetune.md, peft_and_multitask.md): 1e-4 for full fine-tuning (Trainer and "
        "ours), 3e-4 for recycling (upper layers in full), 3e-3 for LoRA above the cut (r = 8, alpha = 16). "
        "Recycling cuts at k = N/2. bf16 is autocast (fp32 master weights) for every method. Training time excludes "
        "evaluation (and the one-off cache build, its own column). Per seed every method ran in turn, in one process "
        "per model on a shared 2-core machine: absolute times compare only within a model's table.",
        "",
        "Batching differs by design: embrecycle buckets examples of similar length (its default), the Trainer draws "
        "random batches and pads each to its longest example (DataCollatorWithPadding, group_by_length off: its "
        "default). The padded tokens per second column separates that from kernel speed. 'Other processes' CPU' is "
        "the cores' worth of CPU other processes took while the run trained (embrecycle.bench.timing.OtherCpu): "
        "well above 0 the run shared the 2 cores and its times are inflated.",
        "",
    ]
    for model_dir in sorted((RESULTS / "hardware").glob("*/")):
        f = model_dir / "runs.jsonl"
        if not f.exists():
            continue
        rows = [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
        if not rows:
            continue
        rows = [r for r in rows if r.get("settings") == rows[-1].get("settings")]  # the latest run's settings only
        model = model_dir.name
        section, summary = _model_report(model, rows)
        models[model] = summary
        lines += section
    quick = sorted((RESULTS / "hardware").glob("*/runs-quick.jsonl"))
    if quick:
        lines += ["## Smoke runs (`--quick`)", ""]
        for q in quick:
            rows = [json.loads(x) for x in q.read_text().splitlines() if x.strip()]
            done = sorted({r["method"] for r in rows if r.get("kind") == "train"})
            kinds = sorted({r["kind"] for r in rows})
            lines.append(
                f"* {q.parent.name}: {len(rows)} records ({', '.join(kinds)}); methods run: {', '.join(done)} "
                f"(tiny subsets, to prove the path only; no timing or score is meaningful)."
            )
        lines.append("")
    env = environment()
    lines += [
        f"Machine: {env['cpu']}, {env['cpus']} CPUs, torch threads {env['threads']}, bf16 units: "
        f"{', '.join(env['cpu_bf16_units']) or 'none'}; torch {env['torch']}, transformers {env['transformers']}, "
        f"embrecycle {env['embrecycle']}. Rendered {env['date']}.",
        "",
    ]
    text = "\n".join(lines)
    write_results({"environment": env, "models": models}, RESULTS, "hardware", text)
    print(text)


ROW_LABELS = {
    "trainer-fp32": "HF Trainer, fp32 (its default)",
    "trainer-bf16": "HF Trainer, bf16=True",
    "full-fp32": "embrecycle full fine-tuning, fp32",
    "full-bf16": "embrecycle full fine-tuning, bf16",
    "recycle-fp32": "recycling k = N/2, fp32",
    "recycle-bf16": "recycling k = N/2, bf16",
    "lora-bf16": "recycling k = N/2 + LoRA, bf16",
}


def _model_report(model: str, rows: list[dict[str, Any]]) -> tuple[list[str], dict[str, Any]]:
    train_rows = [r for r in rows if r.get("kind") == "train"]
    settings = train_rows[0]["settings"] if train_rows else rows[0]["settings"]
    by: dict[str, list[dict[str, Any]]] = {m: [r for r in train_rows if r["method"] == m] for m in METHODS}
    peaks = [r for r in rows if r.get("kind") == "peak"]
    peak = {d: max(p["peak"][d] for p in peaks) for d in ("fp32", "bf16", "bf16-autocast")} if peaks else {}
    eps = {m: _mean([r["examples_per_second"] for r in rs]) for m, rs in by.items()}
    tps = {m: _mean([r["padded_tokens"] / r["train_seconds"] for r in rs]) for m, rs in by.items()}
    f1 = {m: [r["macro_f1"] for r in rs] for m, rs in by.items()}
    lines = [
        f"## {model}",
        "",
        f"{settings['train_limit']} training / {settings['dev_limit']} dev examples, {settings['epochs']} epochs, "
        f"cut k = {settings['layer']}. Each row: mean over its seeds (± sample std where more than one). "
        f"embrecycle code revision {settings.get('code', 1)}: {CODE_REVISIONS[settings.get('code', 1)]}.",
        "",
    ]
    table = []
    for m in METHODS:
        rs = by[m]
        if not rs:
            continue
        cache = [r["cache_build_seconds"] for r in rs if r.get("cache_build_seconds")]
        table.append(
            [
                ROW_LABELS[m],
                ",".join(str(r["seed"]) for r in rs),
                f"{rs[0]['lr']:g}",
                _ms([r["examples_per_second"] for r in rs], ".1f"),
                _ms([r["seconds_per_epoch"] for r in rs], ".1f"),
                f"{tps[m]:,.0f}",
                _ms(f1[m]),
                f"{max(cache):.1f}" if cache else "–",
                f"{rs[0]['trainable_parameters']:,}",
                f"{max(r.get('other_cpu_cores') or 0.0 for r in rs):.2f}",
            ]
        )
    lines += markdown_table(
        ["method", "seeds", "lr", "train examples/s", "s/epoch", "padded tokens/s", "dev macro-F1", "cache build (s)",
         "trainable params", "other processes' CPU (cores, max)"],
        table,
    )  # fmt: skip

    def ratio(a: str, b: str) -> float | None:
        return eps[a] / eps[b] if by[a] and by[b] else None

    def fmt(x: float | None, f: str = ".2f") -> str:
        return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:{f}}x"

    g_trainer = ratio("trainer-bf16", "trainer-fp32")
    g_full = ratio("full-bf16", "full-fp32")
    g_matmul = peak["bf16"] / peak["fp32"] if peak else None
    r_full32, r_full16 = ratio("full-fp32", "trainer-fp32"), ratio("full-bf16", "trainer-bf16")
    r_rec16 = ratio("recycle-bf16", "trainer-bf16")
    r_rec16_vs32 = ratio("recycle-bf16", "trainer-fp32")
    target_mpnet = model == "mpnet-base"
    lines += [
        "",
        "### Speed ratios (training examples/s)",
        "",
        *markdown_table(
            ["ratio", "value", "target", "verdict"],
            [
                [
                    "our full fine-tuning / Trainer, fp32",
                    fmt(r_full32),
                    ">= 0.90x",
                    _verdict(None if r_full32 is None else r_full32 >= 0.9),
                ],
                [
                    "our full fine-tuning / Trainer, bf16",
                    fmt(r_full16),
                    ">= 0.90x",
                    _verdict(None if r_full16 is None else r_full16 >= 0.9),
                ],
                [
                    "recycling bf16 / Trainer bf16",
                    fmt(r_rec16),
                    ">= 1.9x (ceiling 2x) on MPNet-base",
                    _verdict(None if r_rec16 is None else r_rec16 >= 1.9)
                    + ("" if target_mpnet else " (target is MPNet's; shown for reference)"),
                ],
                ["Trainer bf16 / Trainer fp32 (the machine's bf16 gain, end to end)", fmt(g_trainer), "report", ""],
                ["embrecycle full bf16 / fp32", fmt(g_full), "report", ""],
                ["matmul peak bf16 / fp32 (the machine's bf16 gain, kernel)", fmt(g_matmul), "report", ""],
                [
                    "recycling bf16 / Trainer fp32",
                    fmt(r_rec16_vs32),
                    f">= 1.9 x {fmt(g_trainer)} = {fmt(1.9 * g_trainer if g_trainer else None)} on MPNet-base",
                    _verdict(None if r_rec16_vs32 is None or g_trainer is None else r_rec16_vs32 >= 1.9 * g_trainer)
                    + ("" if target_mpnet else " (MPNet's target; for reference)"),
                ],
                ["recycling fp32 / Trainer fp32", fmt(ratio("recycle-fp32", "trainer-fp32")), "report", ""],
                ["recycling fp32 / our full fp32", fmt(ratio("recycle-fp32", "full-fp32")), "report (ceiling 2x)", ""],
                ["recycling bf16 / our full bf16", fmt(ratio("recycle-bf16", "full-bf16")), "report (ceiling 2x)", ""],
                ["LoRA bf16 / Trainer bf16", fmt(ratio("lora-bf16", "trainer-bf16")), "report", ""],
            ],
        ),
        "",
        "### bf16 dev scores against fp32's seed-to-seed spread",
        "",
    ]
    score_rows = []
    score_verdicts = {}
    for kind in ("full", "recycle"):
        a, b = f1[f"{kind}-fp32"], f1[f"{kind}-bf16"]
        if not a or not b:
            continue
        spread = max(a) - min(a) if len(a) > 1 else None
        diff = _mean(b) - _mean(a)
        ok = None if spread is None else abs(diff) <= spread
        score_verdicts[kind] = ok
        score_rows.append(
            [kind, _ms(a), _ms(b), f"{diff:+.4f}", "–" if spread is None else f"{spread:.4f}",
             f"{min(b):.4f}..{max(b):.4f}", _verdict(ok)]
        )  # fmt: skip
    lines += markdown_table(
        ["method", "fp32 macro-F1", "bf16 macro-F1", "bf16 - fp32 (means)", "fp32 spread (max - min)",
         "bf16 range", "|difference| within fp32 spread"],
        score_rows,
    )  # fmt: skip
    # FLOP/s
    lines += ["", "### Achieved FLOP/s of training steps against this machine's matmul peak", ""]
    flop_rows = []
    shares = {}
    for m in METHODS:
        rs = by[m]
        if not rs or m.startswith("lora") or not peak:
            continue
        prec = m.split("-")[1]
        ach = _mean([r["achieved_flops"] for r in rs])
        med = _mean([r["median_step_flops"] for r in rs])
        shares[m] = ach / peak[prec]
        flop_rows.append(
            [ROW_LABELS[m], str(rs[0]["counted_layers"]), f"{ach / 1e9:.1f}", f"{med / 1e9:.1f}",
             f"{peak[prec] / 1e9:.1f}", f"{ach / peak[prec]:.0%}", f"{med / peak[prec]:.0%}"]
        )  # fmt: skip
    lines += markdown_table(
        ["method", "layers counted", "achieved GFLOP/s (all steps)", "median step GFLOP/s", "peak GFLOP/s (same dtype)",
         "share", "share (median step)"],
        flop_rows,
    )  # fmt: skip
    rec_share = shares.get("recycle-bf16")
    lines += [
        "",
        "FLOPs per step: 3 x forward (forward + backward) over the counted encoder layers; per layer and token "
        "2 (4 h^2 + 2 h i) for the q, k, v, o and feed-forward matmuls plus 2 x 2 L h for the attention scores and "
        "their product with the values, L the step's padded length; tokens per step = batch size x the padded "
        "length of that very batch (exact: the batches are recomputed from embrecycle's seeded bucketing, and "
        "counted in the Trainer's collator). The embeddings, the pooler and head, the optimiser and attention "
        "softmax/norm/GELU are not counted. 'All steps' is total FLOPs / total step seconds; the median step is "
        "the step of median FLOP/s.",
        "",
    ]
    if peaks:
        p0 = peaks[-1]
        lines += [
            "Matmul peak: best of 7 of a (4096 x h) @ (h x 4h) and a 2048^3 product, measured "
            f"{len(peaks)} time(s) in the benchmark process (start and end); best: fp32 "
            f"{peak['fp32'] / 1e9:.1f} GFLOP/s, bf16 {peak['bf16'] / 1e9:.1f} GFLOP/s (native bf16 tensors), "
            f"fp32 tensors under bf16 autocast {peak['bf16-autocast'] / 1e9:.1f} GFLOP/s (the cast included). "
            f"Last measurement: {', '.join(f'{k} {v / 1e9:.1f}' for k, v in p0['matmuls'].items())} GFLOP/s.",
            "",
            "Target: recycled bf16 step at >= 40% of the bf16 peak on MPNet-base: "
            f"{f'{rec_share:.0%}' if rec_share else '–'} "
            f"here ({_verdict(None if rec_share is None else rec_share >= 0.4)}"
            + ("" if target_mpnet else ", MiniLM's share shown for reference; the target is MPNet's")
            + ").",
            "",
        ]
    prof = [r for r in rows if r.get("kind") == "profile"]
    if prof:
        top = prof[-1]["top_ops"]
        lines += [
            "### Where a recycled bf16 run's time goes (torch profiler, ops by self CPU time)",
            "",
            f"{prof[-1]['train_examples']} training examples, 1 epoch + 1 evaluation, cache already built "
            f"(full table: benchmarks/results/hardware/{model}/profile-recycle-bf16.txt).",
            "",
            *markdown_table(
                ["op", "share of self CPU time", "calls"],
                [[f"`{t['op']}`", f"{t['self_cpu_share']:.1%}", str(t["calls"])] for t in top],
            ),
            "",
        ]
    inf = [r for r in rows if r.get("kind") == "inference"]
    inference = {}
    if inf:
        b = inf[-1]["best_seconds"]
        n = inf[-1]["documents"]
        inference = {
            "shared_vs_separate": {p: b[f"separate5-{p}"] / b[f"shared5-{p}"] for p in ("fp32", "bf16")},
            "single_bf16_gain": b["single-fp32"] / b["single-bf16"],
            "shared_bf16_gain": b["shared5-fp32"] / b["shared5-bf16"],
            "separate_bf16_gain": b["separate5-fp32"] / b["separate5-bf16"],
            "single_vs_plain": {p: b[f"plain1-{p}"] / b[f"single-{p}"] for p in ("fp32", "bf16")},
        }
        has_apart = "apart5-fp32" in b
        if has_apart:
            inference["apart_vs_separate"] = {p: b[f"separate5-{p}"] / b[f"apart5-{p}"] for p in ("fp32", "bf16")}
        memory = inf[-1].get("parameter_bytes")
        lines += [
            "### Inference on the cached dev documents",
            "",
            f"{n} dev documents, all cached at layer k (hits: {inf[-1]['cache_hits']}); best of "
            f"{len(inf[-1]['seconds']['single-fp32'])}, variants alternating in one process, after one warm-up call "
            "each"
            + (f" (on {inf[-1]['warm_up_documents']} of the documents)" if "warm_up_documents" in inf[-1] else "")
            + ". 'single': one recycled run's "
            "`TaskModel.predict` over the cache; 'shared, 5 tasks': `TaskSet.predict` of 5 runs over the cache "
            f"(one quick LoRA-above-the-cut run, 1 epoch on {min(200, settings['train_limit'])} examples, copied under "
            "5 names: the computation is that of 5 tasks); 'separate, 5 models': the run exported with "
            "`export_run` as a plain transformers model, 5 copies, each tokenizing and running all N layers over "
            "every document (length-sorted batches of 64); 'plain, 1 model': one of those.",
            "",
            *markdown_table(
                ["variant", "fp32 (s)", "bf16 (s)", "bf16 gain", "docs/s fp32", "docs/s bf16"],
                [
                    [
                        label,
                        f"{b[f'{key}-fp32']:.2f}",
                        f"{b[f'{key}-bf16']:.2f}",
                        f"{b[f'{key}-fp32'] / b[f'{key}-bf16']:.2f}x",
                        f"{n / b[f'{key}-fp32']:.0f}",
                        f"{n / b[f'{key}-bf16']:.0f}",
                    ]
                    for key, label in (
                        ("single", "single recycled run, cached"),
                        ("plain1", "plain, 1 model"),
                        ("shared5", "shared pass, 5 tasks, cached"),
                        *([("apart5", "shared pass, 5 tasks, cached, LoRA kept apart")] if has_apart else []),
                        ("separate5", "separate, 5 full models"),
                    )
                ],
            ),
            "",
            *markdown_table(
                ["ratio", "fp32", "bf16", "target", "verdict"],
                [
                    [
                        "5 separate full models / shared pass of 5 (k = N/2)",
                        f"{inference['shared_vs_separate']['fp32']:.2f}x",
                        f"{inference['shared_vs_separate']['bf16']:.2f}x",
                        ">= 1.9x (ceiling 2x) in the same precision",
                        f"fp32 {_verdict(inference['shared_vs_separate']['fp32'] >= 1.9)}, "
                        f"bf16 {_verdict(inference['shared_vs_separate']['bf16'] >= 1.9)}",
                    ],
                    *(
                        [
                            [
                                "5 separate full models / shared pass of 5, LoRA kept apart",
                                f"{inference['apart_vs_separate']['fp32']:.2f}x",
                                f"{inference['apart_vs_separate']['bf16']:.2f}x",
                                "report (least memory)",
                                "",
                            ]
                        ]
                        if has_apart
                        else []
                    ),
                    [
                        "1 plain model / 1 recycled run, cached",
                        f"{inference['single_vs_plain']['fp32']:.2f}x",
                        f"{inference['single_vs_plain']['bf16']:.2f}x",
                        "report",
                        "",
                    ],
                ],
            ),
            "",
        ]
        if memory:
            lines += [
                "Weights held for 5 tasks (parameters and buffers, fp32): shared pass with LoRA merged "
                f"{memory['shared5-merged'] / 1e6:.1f} MB, with LoRA kept apart "
                f"{memory['shared5-apart'] / 1e6:.1f} MB, "
                f"5 separate models {memory['separate5'] / 1e6:.1f} MB. The 5 tasks here are copies of one run, so "
                "their merged upper layers are equal and held once; 5 distinct LoRA tasks, merged, would hold "
                f"{(memory['shared5-merged'] + (N_TASKS - 1) * memory['upper_layers']) / 1e6:.1f} MB.",
                "",
            ]
            inference["parameter_bytes"] = memory
    units = environment()["cpu_bf16_units"]
    summary = {
        "settings": settings,
        "bf16_units": units,
        "rows": {
            m: {
                "seeds": [r["seed"] for r in rs],
                "examples_per_second": eps[m],
                "seconds_per_epoch": _mean([r["seconds_per_epoch"] for r in rs]),
                "padded_tokens_per_second": tps[m],
                "macro_f1": f1[m],
                "macro_f1_mean": _mean(f1[m]),
                "macro_f1_std": statistics.stdev(f1[m]) if len(f1[m]) > 1 else None,
                "trainable_parameters": rs[0]["trainable_parameters"],
            }
            for m, rs in by.items()
            if rs
        },
        "ratios": {
            "full_vs_trainer_fp32": r_full32,
            "full_vs_trainer_bf16": r_full16,
            "recycle_bf16_vs_trainer_bf16": r_rec16,
            "recycle_bf16_vs_trainer_fp32": r_rec16_vs32,
            "trainer_bf16_gain": g_trainer,
            "full_bf16_gain": g_full,
            "matmul_bf16_gain": g_matmul,
        },
        "bf16_scores_within_fp32_spread": score_verdicts,
        "peak_flops": peak,
        "flops_share": shares,
        "inference": inference,
        "runs": [{k: v for k, v in r.items() if k not in ("step_seconds", "step_tokens")} for r in train_rows],
    }
    return lines, summary


if __name__ == "__main__":
    raise SystemExit(main())
