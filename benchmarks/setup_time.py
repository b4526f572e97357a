"""Training set-up time: from ``train()`` being called to its first optimiser step, on a warm cache.

MiniLM-L6 cut at k = 3, 2,000 sci-cite training documents (and 200 dev): the first call builds the cache,
the next calls find every document cached, so what they measure is the set-up a repeated training run
pays (model load, cache lookup, tokenization, run directory). Prints the median of three warm runs and
writes ``benchmarks/results/setup_time.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from embrecycle.offline_models import minilm_l6_path
from embrecycle.training import TrainConfig, train

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "sci-cite"


def first_step_seconds(config: TrainConfig) -> float:
    """Seconds from calling train() to the first optimiser step (training is then cut short)."""

    class Stop(Exception):
        pass

    start = time.perf_counter()
    original = torch.optim.AdamW.step

    def step(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        raise Stop

    torch.optim.AdamW.step = step  # type: ignore[method-assign]
    try:
        train(config, progress=False)
    except Stop:
        return time.perf_counter() - start
    finally:
        torch.optim.AdamW.step = original  # type: ignore[method-assign]
    raise RuntimeError("training finished without an optimiser step")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--label", default="now", help="Name of this measurement in the results file.")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = TrainConfig(
            task="classification",
            model=minilm_l6_path(),
            layer=3,
            train=str(DATA / "train.jsonl"),
            dev=str(DATA / "dev.jsonl"),
            out=f"{tmp}/run",
            cache=f"{tmp}/cache",
            train_limit=2000,
            dev_limit=200,
            epochs=1,
            max_length=128,
        )
        cold = first_step_seconds(config)
        warm = [first_step_seconds(config) for _ in range(args.repeats)]
    result = {"cold_seconds": round(cold, 2), "warm_seconds": [round(w, 2) for w in warm]}
    result["warm_median_seconds"] = round(statistics.median(warm), 2)
    print(f"{args.label}: set-up before the first step: cold {cold:.2f} s, warm median {statistics.median(warm):.2f} s")
    path = Path(__file__).parent / "results" / "setup_time.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data[args.label] = result
    path.write_text(json.dumps(data, indent=2) + "\n")


if __name__ == "__main__":
    main()
