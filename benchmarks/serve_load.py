"""Load test: one `embrecycle serve` holding T task models vs T separate servers of exported plain models.

Setup (kept under ``benchmarks/results/serve_load/work``, not for version control): MiniLM-L6 cut at k = 3,
a float16 cache of 1,000 sci-cite training sentences, and five sci-cite classifiers trained on it (1 epoch;
upper layers fully trained x 3, LoRA x 2: five task models of one trunk), each also exported as a plain
transformers model (``embrecycle export``).

Per configuration and load level, the servers start on 127.0.0.1, ``C`` clients (asyncio, one connection
each) send one document per request back to back for ``--seconds`` (20) seconds, then the servers stop. Half the
documents are cached training sentences, half are unseen sci-cite test sentences (the plain servers run every
layer for both: they have no cache). A request for T tasks is, for the separate servers, T concurrent HTTP
requests, one per server, done when the last answers. Reported per level: documents/s with all T tasks
predicted, p50/p95/p99 latency, errors by kind (5xx, timeouts, connection errors), and the servers' summed
resident memory (RSS) at the end. Both sides run fp32 on the same cores; T separate servers get
``max(1, cores // T)`` torch threads each (T servers of all cores each would fight over them), the shared
server all cores; both cut their batches into forward passes of at most 1,024 padded tokens (the shared
server's CPU default). ``--max-concurrent`` is 64 for every server, so 128 clients (run for the largest T)
are above the overload point.

    .venv/bin/python benchmarks/serve_load.py [--seconds 20] [--levels 8,32,64,128] [--tasks 1,3,5]
    .venv/bin/python benchmarks/serve_load.py --report

Rows are kept per finished (configuration, level) in ``benchmarks/results/serve_load/runs.jsonl``
(resumable); the report is ``benchmarks/results/serve_load.{md,json}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import paper_datasets  # noqa: E402
from embrecycle.bench.results import environment  # noqa: E402
from embrecycle.bench.runner import resolve_model  # noqa: E402
from kept_rows import KeptRows  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
OUT = RESULTS / "serve_load"
WORK = OUT / "work"
RUNS = KeptRows(OUT / "runs.jsonl")
MODES = ["full", "full", "lora", "full", "lora"]  # the five task models' training modes
PY = sys.executable
CORES = len(os.sched_getaffinity(0))


def _texts(split: str, n: int) -> list[str]:
    lines = (paper_datasets.DATA_DIR / "sci-cite" / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(x)["text"] for x in lines[:n]]


def prepare() -> dict[str, Any]:
    """The cache, the five runs and their exports (each made once; a re-run reuses them)."""
    from embrecycle import export_run
    from embrecycle.training import TrainConfig, train

    WORK.mkdir(parents=True, exist_ok=True)
    (WORK / ".gitignore").write_text("*\n")
    data = WORK / "data"
    data.mkdir(exist_ok=True)
    for split, n in (("train", 1000), ("dev", 300)):
        lines = (paper_datasets.DATA_DIR / "sci-cite" / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
        (data / f"{split}.jsonl").write_text("\n".join(lines[:n]) + "\n", encoding="utf-8")
    model = resolve_model("minilm-l6")
    runs, exports = [], []
    for i, mode in enumerate(MODES, 1):
        run = WORK / "runs" / f"task{i}"
        if not (run / "run.json").exists():
            cfg = TrainConfig(
                task="classification", model=model, layer=3, train=str(data / "train.jsonl"),
                dev=str(data / "dev.jsonl"), out=str(run), cache=str(WORK / "cache"), epochs=1, seed=i,
                upper=mode, precision="fp32", overwrite=True,
            )  # fmt: skip
            train(cfg, progress=False)
        export = WORK / "exports" / f"task{i}"
        if not (export / "config.json").exists():
            export_run(str(run), export)
        runs.append(str(run))
        exports.append(str(export))
    return {"runs": runs, "exports": exports, "cache": str(WORK / "cache")}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(urls: list[str], procs: list[subprocess.Popen[bytes]], timeout: float = 300) -> None:
    end = time.monotonic() + timeout
    for url in urls:
        while True:
            if any(p.poll() is not None for p in procs):
                raise RuntimeError(f"a server exited while starting ({url})")
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > end:
                raise RuntimeError(f"{url} did not become ready")
            time.sleep(0.5)


def start(kind: str, t: int, setup: dict[str, Any]) -> tuple[list[subprocess.Popen[bytes]], list[str]]:
    env = {**os.environ, "EMBRECYCLE_PRECISION": "fp32", "TOKENIZERS_PARALLELISM": "false"}
    procs, urls = [], []
    if kind == "shared":
        port = _free_port()
        cmd = [PY, "-m", "embrecycle.cli", "serve", "--port", str(port), "--cache", setup["cache"], "--precision",
               "fp32", "--device", "cpu"]  # fmt: skip
        for r in setup["runs"][:t]:
            cmd += ["--run", r]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        urls.append(f"http://127.0.0.1:{port}")
    else:
        threads = max(1, CORES // t)
        for e in setup["exports"][:t]:
            port = _free_port()
            cmd = [PY, str(ROOT / "benchmarks" / "plain_server.py"), "--model", e, "--port", str(port), "--threads",
                   str(threads)]  # fmt: skip
            procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            urls.append(f"http://127.0.0.1:{port}")
    _wait_ready(urls, procs)
    return procs, urls


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            p.kill()


def rss(procs: list[subprocess.Popen[bytes]]) -> int:
    total = 0
    for p in procs:
        try:
            proc = psutil.Process(p.pid)
            total += proc.memory_info().rss + sum(c.memory_info().rss for c in proc.children(recursive=True))
        except psutil.NoSuchProcess:
            pass
    return total


async def drive(kind: str, urls: list[str], t: int, clients: int, seconds: float, docs: list[str]) -> dict[str, Any]:
    latencies: list[float] = []
    errors: dict[str, int] = {}
    done = 0
    stop_at = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=clients * len(urls), max_keepalive_connections=clients * len(urls))
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:

        async def one(url: str, body: dict[str, Any]) -> int:
            r = await client.post(f"{url}/v1/predict", json=body)
            return r.status_code

        async def worker(seed: int) -> None:
            nonlocal done
            rng = random.Random(seed)
            while time.monotonic() < stop_at:
                doc = rng.choice(docs)
                t0 = time.perf_counter()
                try:
                    if kind == "shared":
                        codes = [await one(urls[0], {"documents": [doc]})]
                    else:
                        codes = list(await asyncio.gather(*(one(u, {"documents": [doc]}) for u in urls)))
                except httpx.TimeoutException:
                    errors["timeout"] = errors.get("timeout", 0) + 1
                    continue
                except httpx.HTTPError as e:
                    errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
                    continue
                bad = [c for c in codes if c != 200]
                if bad:
                    errors[str(bad[0])] = errors.get(str(bad[0]), 0) + 1
                    if bad[0] == 503:
                        await asyncio.sleep(0.05)  # what a client honouring Retry-After does, shortened
                    continue
                latencies.append(time.perf_counter() - t0)
                done += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(clients)))
        elapsed = time.perf_counter() - started
    lat = np.array(latencies) if latencies else np.array([np.nan])
    return {
        "documents_per_s": done / elapsed,
        "completed": done,
        "seconds": elapsed,
        "p50_ms": float(np.percentile(lat, 50) * 1000),
        "p95_ms": float(np.percentile(lat, 95) * 1000),
        "p99_ms": float(np.percentile(lat, 99) * 1000),
        "errors": errors,
    }


def measure(levels: list[int], tasks: list[int], seconds: float) -> None:
    setup = prepare()
    docs = _texts("train", 1000)[:500] + _texts("test", 500)  # half cached, half unseen
    done = {(r["kind"], r["tasks"], r["clients"]) for r in RUNS.rows()}
    for t in tasks:
        for kind in ("shared", "separate"):
            todo = [c for c in levels if (kind, t, c) not in done and (c <= 64 or t == max(tasks))]
            if not todo:
                continue
            procs, urls = start(kind, t, setup)
            try:
                asyncio.run(drive(kind, urls, t, 4, 5, docs))  # warm-up: first batches, lazy allocations
                for clients in todo:
                    row = asyncio.run(drive(kind, urls, t, clients, seconds, docs))
                    RUNS.keep({"kind": kind, "tasks": t, "clients": clients, **row, "rss_bytes": rss(procs),
                           "servers": len(procs), "cores": CORES,
                           "when": datetime.now(UTC).isoformat(timespec="seconds")})  # fmt: skip
            finally:
                stop(procs)


def report() -> None:
    rows = RUNS.rows()
    by = {(r["kind"], r["tasks"], r["clients"]): r for r in rows}
    lines = [
        "# Serving T task models: one shared-trunk server vs T separate servers",
        "",
        "Generated by `benchmarks/serve_load.py` (see its docstring for the setup). MiniLM-L6, k = 3, sci-cite "
        "sentences, one document per request, half of them cached; fp32 on the same "
        f"{rows[0]['cores'] if rows else '?'} CPU cores, the load generator on them too. Throughput counts documents "
        "with all T tasks predicted.",
        "",
        "| T | clients | shared docs/s | separate docs/s | ratio | shared p50 / p95 / p99 ms | separate p50 / p95 / "
        "p99 ms | shared errors | separate errors | shared RSS MB | separate RSS MB |",
        "|---:|---:|---:|---:|---:|---|---|---|---|---:|---:|",
    ]
    for t in sorted({r["tasks"] for r in rows}):
        for c in sorted({r["clients"] for r in rows if r["tasks"] == t}):
            s, p = by.get(("shared", t, c)), by.get(("separate", t, c))
            if not s or not p:
                continue
            lines.append(
                f"| {t} | {c} | {s['documents_per_s']:.1f} | {p['documents_per_s']:.1f} | "
                f"{s['documents_per_s'] / max(p['documents_per_s'], 1e-9):.2f}x | "
                f"{s['p50_ms']:.0f} / {s['p95_ms']:.0f} / {s['p99_ms']:.0f} | "
                f"{p['p50_ms']:.0f} / {p['p95_ms']:.0f} / {p['p99_ms']:.0f} | {_errors(s)} | {_errors(p)} | "
                f"{s['rss_bytes'] / 2**20:.0f} | {p['rss_bytes'] / 2**20:.0f} |"
            )
    lines += ["", *_targets(by)]
    (RESULTS / "serve_load.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (RESULTS / "serve_load.json").write_text(
        json.dumps({"rows": rows, "environment": environment()}, indent=2) + "\n", encoding="utf-8"
    )
    print("\n".join(lines))


def _errors(r: dict[str, Any]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(r["errors"].items())) or "0"


def _targets(by: dict[tuple[str, int, int], dict[str, Any]]) -> list[str]:
    """The issue's targets, each with the measured figure."""
    out = ["Targets (issue 22):", ""]
    ratios = [
        (c, by[("shared", 5, c)]["documents_per_s"] / max(by[("separate", 5, c)]["documents_per_s"], 1e-9))
        for c in (8, 32, 64)
        if ("shared", 5, c) in by and ("separate", 5, c) in by
    ]
    if ratios:
        shown = ", ".join(f"{r:.2f}x at {c} clients" for c, r in ratios)
        met = [c for c, r in ratios if r >= 1.8]
        missed = [c for c, r in ratios if r < 1.8]
        verdict = (
            "met at every level"
            if not missed
            else (
                f"met at {', '.join(map(str, met))} clients, missed at {', '.join(map(str, missed))}"
                if met
                else "missed"
            )
        )
        out.append(f"- Shared server at T = 5 at least 1.8x the throughput of five servers: {shown} ({verdict}).")
    mem = [(by[("shared", 5, c)]["rss_bytes"], by[("separate", 5, c)]["rss_bytes"]) for c in (32,)
           if ("shared", 5, c) in by and ("separate", 5, c) in by]  # fmt: skip
    if mem:
        s, p = mem[0]
        out.append(f"- At most half their memory: {s / 2**20:.0f} MB vs {p / 2**20:.0f} MB = {s / p:.0%} "
                   f"({'met' if s <= p / 2 else 'missed'}).")  # fmt: skip
    below = [r for (k, t, c), r in by.items() if k == "shared" and c <= 64]
    bad = sum(sum(v for e, v in r["errors"].items()) for r in below)
    out.append(f"- 0 errors below the overload point (up to 64 clients, --max-concurrent 64): {bad} errors "
               f"({'met' if bad == 0 else 'missed'}).")  # fmt: skip
    over = [r for (k, t, c), r in by.items() if k == "shared" and c > 64]
    if over:
        kinds = sorted({e for r in over for e in r["errors"]})
        out.append(f"- Above it (128 clients) the shared server answers 503, not timeouts: error kinds {kinds}.")
    p99 = [(t, by[("shared", t, 32)]["p99_ms"]) for t in (1, 3, 5) if ("shared", t, 32) in by]
    if p99:
        out.append("- p99 latency at 32 clients (shared): " + ", ".join(f"{v:.0f} ms at T = {t}" for t, v in p99) + ".")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--levels", default="8,32,64,128", help="client counts (128 only for the largest T)")
    ap.add_argument("--tasks", default="1,3,5")
    ap.add_argument("--report", action="store_true")
    args = ap.parse_args()
    if not args.report:
        measure([int(x) for x in args.levels.split(",")], [int(x) for x in args.tasks.split(",")], args.seconds)
    report()


if __name__ == "__main__":
    main()
