"""bf16 against fp32 on the CPU this runs on: what ``--precision auto`` saves a user, measured on real steps.

``auto`` computes in bf16 only where the CPU has native bf16 units (AVX512-BF16 or AMX); elsewhere it keeps
fp32, and an explicit ``--precision bf16`` warns that torch emulates it. This measures both precisions side
by side on the same machine, through the product's own training loop: MiniLM-L6 and MPNet-base, sci-cite
(``../shared/data``), the first N training sentences, 1 epoch, batch 32, max length 128, learning rate 1e-4;
full fine-tuning and recycling at k = N/2 (upper layers trained; the cache is built once per precision, not
timed). Per model, the four runs go in turn twice, the second time in reverse order; the faster of each
pair's training throughput (examples/s, evaluation and cache builds excluded) is kept.

    .venv/bin/python benchmarks/bf16_emulated.py            # this machine's rows, then the report
    .venv/bin/python benchmarks/bf16_emulated.py --report

Rows are kept per machine in ``benchmarks/results/bf16_emulated/runs.jsonl`` (a machine already measured is
skipped), so machines with and without native bf16 fill one table: ``bf16_emulated.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import paper_datasets  # noqa: E402
from embrecycle.bench.results import machine_identity  # noqa: E402
from embrecycle.offline_models import minilm_l6_path, mpnet_base_path  # noqa: E402
from embrecycle.training import TrainConfig, train  # noqa: E402
from kept_rows import KeptRows  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
RUNS = KeptRows(RESULTS / "bf16_emulated" / "runs.jsonl")
MODELS = {"minilm-l6": (minilm_l6_path, 3, 256), "mpnet-base": (mpnet_base_path, 6, 64)}
"""Per model: its offline path, the cut (N/2) and how many training sentences each timed run takes."""
VARIANTS = [(method, precision) for method in ("full-finetune", "recycle") for precision in ("fp32", "bf16")]


def measure(models: list[str]) -> None:
    machine = machine_identity("machine", "torch")
    done = {(r["model"], r["cpu"], tuple(r["cpu_bf16_units"])) for r in RUNS.rows()}
    rows = [json.loads(line) for line in (paper_datasets.DATA_DIR / "sci-cite" / "train.jsonl").open()]
    with tempfile.TemporaryDirectory(prefix="embrecycle-bf16-") as tmp:
        work = Path(tmp)
        for name in models:
            if (name, machine["cpu"], tuple(machine["cpu_bf16_units"])) in done:
                print(f"kept: {name} on {machine['cpu']}", flush=True)
                continue
            path, layer, n = MODELS[name]
            train_f, dev_f = work / f"{name}-train.jsonl", work / f"{name}-dev.jsonl"
            train_f.write_text("".join(json.dumps(r) + "\n" for r in rows[:n]))
            dev_f.write_text("".join(json.dumps(r) + "\n" for r in rows[n : n + 32]))
            speeds: dict[str, list[float]] = {}
            for order in (VARIANTS, VARIANTS[::-1]):
                for method, precision in order:
                    cfg = TrainConfig(
                        task="classification",
                        model=path(),
                        layer=layer,
                        train=str(train_f),
                        dev=str(dev_f),
                        out=str(work / "runs" / f"{name}-{method}-{precision}"),
                        cache=str(work / f"cache-{name}-{precision}") if method == "recycle" else None,
                        baseline="full-finetune" if method == "full-finetune" else None,
                        lr=1e-4,
                        epochs=1,
                        max_length=128,
                        precision=precision,
                        overwrite=True,
                    )
                    result = train(cfg, progress=False)
                    speeds.setdefault(f"{method}-{precision}", []).append(result.examples_per_second)
                    print(f"{name} {method} {precision}: {result.examples_per_second:.2f} ex/s", flush=True)
            best = {k: max(v) for k, v in speeds.items()}
            RUNS.keep(
                {
                    "model": name,
                    **machine,
                    "train_examples": n,
                    "examples_per_second": best,
                    "all_examples_per_second": speeds,
                    "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
                }
            )


def report() -> None:
    rows = RUNS.rows()
    lines = [
        "# bf16 vs fp32 on the CPU: native units or emulation",
        "",
        f"Generated {datetime.now(UTC).isoformat(timespec='seconds')} by `benchmarks/bf16_emulated.py` from the rows "
        "kept per machine. Training examples per second through embrecycle's loop (sci-cite, batch 32, max "
        "length 128, 1 epoch; the faster of two runs each), both precisions side by side on the same machine.",
        "",
        "| CPU | native bf16 units | model | method | fp32 ex/s | bf16 ex/s | bf16 vs fp32 | what auto picks |",
        "|---|---|---|---|---|---|---|---|",
    ]
    out = []
    for r in rows:
        units = r["cpu_bf16_units"]
        for method in ("full-finetune", "recycle"):
            fp32, bf16 = r["examples_per_second"][f"{method}-fp32"], r["examples_per_second"][f"{method}-bf16"]
            ratio = bf16 / fp32
            pick = "bf16" if units else "fp32"
            lines.append(
                f"| {r['cpu']} | {', '.join(units) or 'none'} | {r['model']} | {method} | {fp32:.2f} | {bf16:.2f} | "
                f"{ratio:.2f}x | {pick} |"
            )
            out.append({**{k: r[k] for k in ("cpu", "cpu_bf16_units", "model")}, "method": method, "ratio": ratio})
    lines += [
        "",
        "A ratio above 1 means bf16 is faster. Without native units torch emulates bf16, so `--precision auto` "
        "keeps fp32 there and an explicit `--precision bf16` warns.",
    ]
    (RESULTS / "bf16_emulated.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (RESULTS / "bf16_emulated.json").write_text(json.dumps({"rows": out}, indent=2) + "\n")
    print("\n".join(lines))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="minilm-l6,mpnet-base")
    ap.add_argument("--report", action="store_true", help="only render the report from the kept rows")
    args = ap.parse_args()
    if not args.report:
        measure(args.models.split(","))
    report()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
