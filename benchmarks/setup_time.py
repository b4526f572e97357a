"""Training set-up time: from ``train()`` being called to its first optimiser step, on a warm cache.

MiniLM-L6 cut at k = 3, 2,000 sci-cite training documents and 200 dev documents, every one already cached,
so what is measured is the set-up a repeated training run pays: model load, cache lookup, tokenization, run
directory. With ``--compare-with REF`` the same measurement runs, alternately in fresh processes, on the
package as it was at git revision REF (checked out in a temporary worktree) and as it is now: the ratio is
measured side by side. Writes ``benchmarks/results/setup_time.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "sci-cite"
RESULTS = ROOT / "benchmarks" / "results" / "setup_time.json"


def first_step_seconds(run_dir: str, cache: str) -> float:
    """Seconds from calling train() to its first optimiser step (the step is not taken: training stops there)."""
    import torch

    from embrecycle.offline_models import minilm_l6_path
    from embrecycle.training import TrainConfig, train

    class Stop(Exception):
        pass

    def stop(*args: object, **kwargs: object) -> None:
        raise Stop

    config = TrainConfig(
        task="classification",
        model=minilm_l6_path(),
        layer=3,
        train=str(DATA / "train.jsonl"),
        dev=str(DATA / "dev.jsonl"),
        out=run_dir,
        cache=cache,
        train_limit=2000,
        dev_limit=200,
        epochs=1,
        max_length=128,
    )
    torch.optim.AdamW.step = stop  # type: ignore[method-assign,assignment]
    start = time.perf_counter()
    try:
        train(config, progress=False)
    except Stop:
        return time.perf_counter() - start
    raise RuntimeError("training finished without an optimiser step")


def _measure(src: Path, run_dir: str, cache: str) -> float:
    """One measurement in a fresh process importing the package from ``src``."""
    env = {**os.environ, "PYTHONPATH": str(src), "HF_HUB_OFFLINE": "1"}
    code = (
        f"import sys; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); import setup_time; "
        f"print(setup_time.first_step_seconds({run_dir!r}, {cache!r}))"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--compare-with", metavar="REF", help="Git revision to measure beside the working tree.")
    parser.add_argument("--rounds", type=int, default=5, help="Measurements per version (alternating).")
    args = parser.parse_args()
    versions = {"now": ROOT / "src"}
    with tempfile.TemporaryDirectory() as tmp:
        if args.compare_with:
            worktree = Path(tmp) / "ref"
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(worktree),
                            args.compare_with], check=True)  # fmt: skip
            versions = {args.compare_with: worktree / "src", **versions}
        try:
            caches = {name: f"{tmp}/cache-{i}" for i, name in enumerate(versions)}
            cold = {name: _measure(src, f"{tmp}/run-{name}", caches[name]) for name, src in versions.items()}
            warm: dict[str, list[float]] = {name: [] for name in versions}
            for _ in range(args.rounds):
                for name, src in versions.items():
                    warm[name].append(_measure(src, f"{tmp}/run-{name}", caches[name]))
        finally:
            if args.compare_with:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(worktree)], check=False)
    result = {
        "what": "seconds from train() to the first optimiser step, MiniLM-L6 k=3, 2,000 + 200 sci-cite documents",
        "cpus": os.cpu_count(),
        "versions": {
            name: {"cold_seconds": round(cold[name], 2), "warm_seconds": [round(w, 3) for w in warm[name]],
                   "warm_median_seconds": round(statistics.median(warm[name]), 3)}
            for name in versions
        },
    }  # fmt: skip
    print("| version | cold (cache built) | warm median | warm runs |\n|---|---|---|---|")
    for name, r in result["versions"].items():
        print(f"| {name} | {r['cold_seconds']:.2f} s | {r['warm_median_seconds']:.3f} s | {r['warm_seconds']} |")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
