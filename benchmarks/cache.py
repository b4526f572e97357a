"""Cache benchmark: build overhead, bytes per token, and read cost versus a training step.

Run it with ``make bench-cache`` or ``.venv/bin/python benchmarks/cache.py`` (``--quick`` for a
smoke run of well under a minute, ``--help`` for the options). It needs the offline models
(``make install``) and the sci-cite data of the paper datasets (``paper_datasets.py``: ``../shared/data``
next to the repository).

For MiniLM-L6 (cache layer 3) and MPNet-base (cache layer 6), in one process, on the first
``--docs`` distinct documents of ``sci-cite/train.jsonl``:

1. **Build overhead.** ``build_cache`` (fsync on, the default, and fsync off; model loaded
   beforehand and passed as ``encoder=``) against a plain baseline that tokenizes the same
   documents, sorts them by length, batches them identically and runs embeddings + layers 1..k
   (``SplitEncoder.lower``) under ``torch.inference_mode()``, discarding the output. The three
   variants alternate over ``--repeats`` rounds (fresh cache directory each time); the best
   time of each is compared. A run during which other processes took CPU (``/proc/stat``) is
   run again (``--retries``) and left out. As the forward's run-to-run noise can exceed what the
   cache adds, the time spent in the forward is also measured inside every run, and the overhead
   computed from the time outside it. Non-forward costs (weight fingerprint, tokenization with
   offsets, document keys, crc32) are also timed on their own.
2. **Storage.** Bytes per token on disk (``Cache.stats()``) against the raw float16 states
   (``hidden_size * 2`` bytes per token).
3. **Read cost.** ``Cache.read_batch`` of seeded random batches of 32 documents (checksums
   verified or not, warm page cache; and verified with the shard files evicted from the page
   cache first), against one training step of the upper layers on the same batches: forward
   ``SplitEncoder.upper``, mean-pool, linear head, cross-entropy on random labels, backward,
   AdamW step (train mode, lower layers frozen).

Results go to ``<out>/cache.json`` (one row per measurement, plus the machine) and
``<out>/cache.md`` (the report, whose tables are also printed). Absolute times only compare
within one run: the machine this runs on may be shared and noisy.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from torch import nn
from torch.nn import functional as F

import paper_datasets
from embrecycle import BuildConfig, LoadedEncoder, build_cache, load_encoder, open_cache
from embrecycle.bench import environment, write_results
from embrecycle.bench.tables import markdown_table
from embrecycle.bench.timing import CallTimer, OtherCpu, timed
from embrecycle.cache.builder import default_max_length
from embrecycle.cache.store import Cache
from embrecycle.offline_models import minilm_l6_path, mpnet_base_path
from embrecycle.tokenization import encode_documents

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA = paper_datasets.DATA_DIR / "sci-cite" / "train.jsonl"
BATCH_SIZE = 32
TARGET_PCT = 5.0
NUM_LABELS = 3  # sci-cite: background, method, result
QUICK_DOCS = {"minilm": 64, "mpnet": 16}


@dataclass(frozen=True)
class ModelSpec:
    """A model to benchmark."""

    key: str
    name: str
    path: Callable[[], str]
    layer: int
    default_docs: int
    default_repeats: int  # MiniLM runs are short, so more rounds for the same noise


MODELS = (
    ModelSpec("minilm", "MiniLM-L6", minilm_l6_path, 3, 600, 5),
    ModelSpec("mpnet", "MPNet-base", mpnet_base_path, 6, 300, 3),
)


@dataclass(frozen=True)
class Settings:
    """Sizes of one benchmark run."""

    repeats: int | None  # None: the model's default
    retries: int
    max_other_cores: float
    read_batches: int
    cold_batches: int
    steps: int
    warmup_steps: int
    seed: int


# ---- helpers ---------------------------------------------------------------------------------------------------


def load_documents(path: Path, n: int) -> list[str]:
    """The first ``n`` distinct non-blank texts of a JSON-lines file (so that every one is computed)."""
    docs: list[str] = []
    seen: set[str] = set()
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            text = json.loads(line)["text"]
            if text.strip() and text not in seen:
                seen.add(text)
                docs.append(text)
                if len(docs) == n:
                    break
    return docs


def machine_info(work_dir: Path) -> dict[str, Any]:
    """Where the numbers come from: the machine, and the filesystem the caches go to."""
    return environment() | {
        "numpy": np.__version__,
        "work_dir": str(work_dir),
        "work_dir_filesystem": filesystem_of(work_dir),
    }


def filesystem_of(path: Path) -> str:
    """Filesystem type of the mount holding ``path`` (best effort, Linux only)."""
    best, fs = "", "unknown"
    try:
        target = str(path.resolve())
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) > 2 and target.startswith(parts[1]) and len(parts[1]) > len(best):
                best, fs = parts[1], parts[2]
    except OSError:
        pass
    return fs


def pct(part: float, whole: float) -> float:
    return 100.0 * part / whole if whole else float("nan")


def evict_page_cache(root: Path) -> None:
    """Ask the kernel to drop the cached pages of every file under ``root`` (no root rights needed)."""
    for p in root.rglob("*"):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


# ---- 1. build overhead -----------------------------------------------------------------------------------------


def plain_forward(encoder: LoadedEncoder, docs: Sequence[str], max_length: int, limit: int | None = None) -> int:
    """Tokenize, sort by length, batch like the builder and run the lower layers; returns the tokens run."""
    tok, split = encoder.tokenizer, encoder.split
    split.eval()
    ids_list: list[list[int]] = tok(list(docs), truncation=True, max_length=max_length)["input_ids"]
    order = sorted(range(len(ids_list)), key=lambda i: len(ids_list[i]))
    batches = [order[i : i + BATCH_SIZE] for i in range(0, len(order), BATCH_SIZE)][:limit]
    pad_id = tok.pad_token_id or 0
    tokens = 0
    for batch in batches:
        lens = [len(ids_list[i]) for i in batch]
        ids = torch.full((len(batch), max(lens)), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for j, i in enumerate(batch):
            ids[j, : lens[j]] = torch.tensor(ids_list[i])
            mask[j, : lens[j]] = 1
        with torch.inference_mode():
            split.lower(ids, mask)
        tokens += sum(lens)
    return tokens


def bench_build(
    spec: ModelSpec, encoder: LoadedEncoder, docs: list[str], work: Path, settings: Settings
) -> tuple[list[dict[str, Any]], Path]:
    """Alternate plain / build (fsync) / build (no fsync); returns the rows and the last fsync-built cache."""
    config = BuildConfig(model=encoder.model_name, layer=spec.layer, batch_size=BATCH_SIZE)
    max_length = default_max_length(encoder)
    # Warm-up of both paths: first-call allocations, kernel selection, lazy imports.
    plain_forward(encoder, docs, max_length, limit=2)
    build_cache(docs[:BATCH_SIZE], work / f"{spec.key}-warmup", config, encoder=encoder, progress=False)
    _rmtree(work / f"{spec.key}-warmup")

    def run(variant: str, run_dir: Path) -> tuple[float, int]:
        if variant == "plain":
            return timed(lambda: plain_forward(encoder, docs, max_length))
        cfg = dataclasses.replace(config, fsync=variant == "build_fsync")
        seconds, summary = timed(lambda: build_cache(docs, run_dir, cfg, encoder=encoder, progress=False))
        if summary.computed != len(docs):
            raise RuntimeError(f"{spec.name}: the build computed {summary.computed} of {len(docs)} documents")
        return seconds, summary.tokens_computed

    variants = ["plain", "build_fsync", "build_nofsync"]
    rows: list[dict[str, Any]] = []
    keep: Path | None = None
    for r in range(settings.repeats or spec.default_repeats):
        for variant in variants[r % 3 :] + variants[: r % 3]:  # rotate the order every round
            for attempt in range(1 + settings.retries):  # a run slowed down by other processes is run again
                run_dir = work / f"{spec.key}-{variant}-{r}-{attempt}"
                # the forward is timed inside each run, so the rest (what the cache adds) is measured without its noise
                with OtherCpu() as others, CallTimer(encoder.split, "lower") as forward:
                    seconds, tokens = run(variant, run_dir)
                contended = others.cores > settings.max_other_cores
                extra = {
                    "run": r + 1,
                    "attempt": attempt + 1,
                    "other_cores": others.cores,
                    "contended": contended,
                    "forward_seconds": forward.seconds,
                    "outside_forward_seconds": seconds - forward.seconds,
                }
                rows.append(_speed_row(spec, "build_run", variant, seconds, len(docs), tokens, **extra))
                retry = contended and attempt < settings.retries
                print(
                    f"  {variant:<14} round {r + 1}: {seconds:6.2f} s (others used {others.cores:.2f} cores)"
                    + (": contended, again" if retry else ""),
                    flush=True,
                )
                if variant == "build_fsync":
                    if keep is not None:
                        _rmtree(keep)
                    keep = run_dir
                elif variant == "build_nofsync":
                    _rmtree(run_dir)
                if not retry:
                    break
    assert keep is not None
    runs = {v: _quiet([row for row in rows if row["variant"] == v]) for v in variants}
    best = {v: min(runs[v], key=lambda row: row["seconds"]) for v in variants}
    median = {v: statistics.median(row["seconds"] for row in runs[v]) for v in variants}
    outside = {v: statistics.median(row["outside_forward_seconds"] for row in runs[v]) for v in variants}
    if best["plain"]["tokens"] != best["build_fsync"]["tokens"]:
        raise RuntimeError(f"{spec.name}: plain and build ran different token counts")
    for v in variants:
        row = _speed_row(spec, "build_best", v, best[v]["seconds"], len(docs), best[v]["tokens"])
        row["median_seconds"] = median[v]
        row["median_forward_seconds"] = statistics.median(r["forward_seconds"] for r in runs[v])
        row["median_outside_forward_seconds"] = outside[v]
        every = [r for r in rows if r["measurement"] == "build_run" and r["variant"] == v]
        row["runs_used"] = len(runs[v])
        row["runs_seconds"] = [r["seconds"] for r in every]
        row["runs_other_cores"] = [r["other_cores"] for r in every]
        if v != "plain":
            row["overhead_pct"] = pct(best[v]["seconds"] - best["plain"]["seconds"], best["plain"]["seconds"])
            row["median_overhead_pct"] = pct(median[v] - median["plain"], median["plain"])
            # What the build adds outside the forward, over the plain run's own time outside it (tokenization...).
            row["outside_forward_overhead_pct"] = pct(outside[v] - outside["plain"], median["plain"])
        rows.append(row)
    return rows, keep


def _quiet(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The runs no other process slowed down, or all of them if there is none."""
    return [r for r in runs if not r["contended"]] or runs


def _speed_row(
    spec: ModelSpec, measurement: str, variant: str, seconds: float, docs: int, tokens: int, **extra: Any
) -> dict[str, Any]:
    return {
        "model": spec.name,
        "layer": spec.layer,
        "measurement": measurement,
        "variant": variant,
        **extra,
        "seconds": seconds,
        "docs": docs,
        "tokens": tokens,
        "docs_per_s": docs / seconds,
        "tokens_per_s": tokens / seconds,
    }


def bench_build_parts(spec: ModelSpec, encoder: LoadedEncoder, docs: list[str], cache_dir: Path) -> dict[str, Any]:
    """Seconds of the build's non-forward steps, each timed on its own (one pass over ``docs``)."""
    cache = open_cache(cache_dir)
    max_length = cache.settings.max_length
    fingerprint_s, _ = timed(encoder.lower_fingerprint)
    keys_s, _ = timed(lambda: [cache.key(d) for d in docs])
    encode_s, _ = timed(lambda: encode_documents(encoder.tokenizer, docs, max_length))
    plain_tok_s, _ = timed(lambda: encoder.tokenizer(docs, truncation=True, max_length=max_length))
    data = b"".join(p.read_bytes() for p in sorted((cache_dir / "shards").glob("*.hidden")))
    crc_s, _ = timed(lambda: zlib.crc32(data))
    return {
        "model": spec.name,
        "layer": spec.layer,
        "measurement": "build_parts",
        "lower_fingerprint_s": fingerprint_s,
        "document_keys_s": keys_s,
        "encode_documents_s": encode_s,
        "plain_tokenize_s": plain_tok_s,
        "crc32_hidden_s": crc_s,
        "docs": len(docs),
    }


# ---- 2. storage ------------------------------------------------------------------------------------------------


def bench_storage(spec: ModelSpec, cache_dir: Path) -> dict[str, Any]:
    cache = open_cache(cache_dir)
    stats = cache.stats()
    by_kind = {
        kind: sum(p.stat().st_size for p in (cache_dir / "shards").glob(f"*.{kind}"))
        for kind in ("hidden", "tokens", "index")
    }
    raw_per_token = cache.settings.hidden_size * 2
    per_token = stats["bytes"] / stats["tokens"]
    return {
        "model": spec.name,
        "layer": spec.layer,
        "measurement": "storage",
        "dtype": cache.settings.dtype,
        "hidden_size": cache.settings.hidden_size,
        "documents": stats["documents"],
        "tokens": stats["tokens"],
        "bytes": stats["bytes"],
        "bytes_hidden": by_kind["hidden"],
        "bytes_tokens": by_kind["tokens"],
        "bytes_index": by_kind["index"],
        "bytes_per_token": per_token,
        "stats_bytes_per_token": stats["bytes_per_token"],
        "raw_bytes_per_token": raw_per_token,
        "overhead_pct": pct(per_token - raw_per_token, raw_per_token),
    }


# ---- 3. read cost vs a training step ---------------------------------------------------------------------------


def bench_read_vs_step(
    spec: ModelSpec, encoder: LoadedEncoder, cache_dir: Path, settings: Settings
) -> list[dict[str, Any]]:
    verified, unverified = open_cache(cache_dir, verify_reads=True), open_cache(cache_dir, verify_reads=False)
    rng = np.random.default_rng(settings.seed)
    size = min(BATCH_SIZE, len(verified))
    batches = [rng.choice(len(verified), size=size, replace=False) for _ in range(settings.read_batches)]
    for cache in (verified, unverified):
        cache.read_batch(batches[0])  # warm-up: opens the memory maps

    read_ms: dict[str, list[float]] = {"verify": [], "no_verify": []}
    with OtherCpu() as read_others:
        for i, idx in enumerate(batches):  # interleaved, alternating which goes first
            pair: list[tuple[str, Cache]] = [("verify", verified), ("no_verify", unverified)]
            for name, cache in pair if i % 2 == 0 else pair[::-1]:
                start = time.perf_counter()
                cache.read_batch(idx)
                read_ms[name].append(1e3 * (time.perf_counter() - start))
    cold: list[float] = []
    cold_cache = open_cache(cache_dir, verify_reads=True)
    for idx in batches[: settings.cold_batches]:
        evict_page_cache(cache_dir)
        start = time.perf_counter()
        cold_cache.read_batch(idx)
        cold.append(1e3 * (time.perf_counter() - start))
    read_ms["verify_cold"] = cold

    step_batches = batches[: settings.warmup_steps + settings.steps]
    steps, step_tokens = train_steps(encoder, verified, step_batches, settings)
    quiet = _quiet(steps)
    step_ms = [s["ms"] for s in quiet]
    step_mean = statistics.fmean(step_ms)
    rows: list[dict[str, Any]] = []
    for name, times in read_ms.items():
        mean = statistics.fmean(times)
        rows.append(
            {
                "model": spec.name,
                "layer": spec.layer,
                "measurement": "read_batch",
                "variant": name,
                "batches": len(times),
                "batch_size": size,
                "mean_ms": mean,
                "median_ms": statistics.median(times),
                "pct_of_step": pct(mean, step_mean),
                "other_cores": None if name == "verify_cold" else read_others.cores,
            }
        )
    rows.append(
        {
            "model": spec.name,
            "layer": spec.layer,
            "measurement": "train_step",
            "variant": f"upper layers {spec.layer + 1}..{encoder.split.num_layers} + linear head, AdamW",
            "batches": len(steps),
            "warmup_batches": settings.warmup_steps,
            "batch_size": size,
            "mean_tokens_padded": step_tokens,
            "mean_ms": step_mean,
            "median_ms": statistics.median(step_ms),
            "steps_used": len(quiet),
            "steps_quiet": not quiet[0]["contended"],
            "steps_ms": [s["ms"] for s in steps],
            "steps_other_cores": [s["other_cores"] for s in steps],
            # The same batches' read cost, for a like-for-like ratio.
            "read_ms_same_batches": statistics.fmean(read_ms["verify"][: len(step_batches)][settings.warmup_steps :]),
        }
    )
    return rows


def train_steps(
    encoder: LoadedEncoder, cache: Cache, batches: list[np.ndarray], settings: Settings
) -> tuple[list[dict[str, Any]], float]:
    """Each training step after the warm-up ones (ms, contention), and the mean padded batch size in tokens."""
    torch.manual_seed(settings.seed)
    split = encoder.split
    split.train()
    split.requires_grad_(False)
    upper = [p for layer in split.upper_layers() for p in layer.parameters()]
    for p in upper:
        p.requires_grad_(True)
    head = nn.Linear(split.hidden_size, NUM_LABELS)
    head.train()
    optimizer = torch.optim.AdamW([*upper, *head.parameters()], lr=2e-5)
    times: list[dict[str, Any]] = []
    padded: list[int] = []
    for i, idx in enumerate(batches):
        batch = cache.read_batch(idx)
        labels = torch.randint(0, NUM_LABELS, (len(idx),))
        gc.collect()
        with OtherCpu() as others:
            start = time.perf_counter()
            hidden = split.upper(batch.hidden, batch.attention_mask)
            mask = batch.attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            loss = F.cross_entropy(head(pooled), labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            elapsed = time.perf_counter() - start
        if i >= settings.warmup_steps:
            contended = others.cores > settings.max_other_cores
            times.append({"ms": 1e3 * elapsed, "other_cores": others.cores, "contended": contended})
            padded.append(int(batch.attention_mask.numel()))
    split.requires_grad_(False)
    split.eval()
    return times, statistics.fmean(padded)


# ---- report ----------------------------------------------------------------------------------------------------


def _find(rows: list[dict[str, Any]], **match: Any) -> dict[str, Any]:
    return next(r for r in rows if all(r.get(k) == v for k, v in match.items()))


def _ok(value: float, target: float) -> str:
    return "yes" if value < target else "**no**"


def model_summary(rows: list[dict[str, Any]], model: str) -> dict[str, Any]:
    plain = _find(rows, model=model, measurement="build_best", variant="plain")
    fsync = _find(rows, model=model, measurement="build_best", variant="build_fsync")
    nofsync = _find(rows, model=model, measurement="build_best", variant="build_nofsync")
    storage = _find(rows, model=model, measurement="storage")
    verify = _find(rows, model=model, measurement="read_batch", variant="verify")
    step = _find(rows, model=model, measurement="train_step")
    return {
        "build_overhead_pct": fsync["overhead_pct"],
        "build_overhead_outside_forward_pct": fsync["outside_forward_overhead_pct"],
        "build_overhead_nofsync_pct": nofsync["overhead_pct"],
        "plain_tokens_per_s": plain["tokens_per_s"],
        "build_tokens_per_s": fsync["tokens_per_s"],
        "bytes_per_token": storage["bytes_per_token"],
        "raw_bytes_per_token": storage["raw_bytes_per_token"],
        "storage_bytes_overhead_pct": storage["overhead_pct"],
        "read_ms": verify["mean_ms"],
        "step_ms": step["mean_ms"],
        "read_pct_of_step": verify["pct_of_step"],
        "build_overhead_target_met": fsync["overhead_pct"] < TARGET_PCT,
        "build_overhead_outside_forward_target_met": fsync["outside_forward_overhead_pct"] < TARGET_PCT,
        "read_target_met": verify["pct_of_step"] < TARGET_PCT,
    }


BUILD_COLUMNS = [
    "Build", "Best s", "Docs/s", "Tokens/s", "Overhead (best)", "Overhead (median)", "Outside forward, median s",
    "Overhead outside forward", "Runs: s (others' cores)",
]  # fmt: skip


def model_table(rows: list[dict[str, Any]], spec: ModelSpec, num_layers: int, max_other: float) -> str:
    name = spec.name
    best = {
        v: _find(rows, model=name, measurement="build_best", variant=v)
        for v in ("plain", "build_fsync", "build_nofsync")
    }
    parts = _find(rows, model=name, measurement="build_parts")
    storage = _find(rows, model=name, measurement="storage")
    reads = {v: _find(rows, model=name, measurement="read_batch", variant=v) for v in ("verify", "no_verify")}
    cold = _find(rows, model=name, measurement="read_batch", variant="verify_cold")
    step = _find(rows, model=name, measurement="train_step")
    docs, tokens = best["plain"]["docs"], best["plain"]["tokens"]
    labels = {
        "plain": f"Plain forward, layers 1..{spec.layer} (baseline)",
        "build_fsync": "`build_cache`, fsync on (default)",
        "build_nofsync": "`build_cache`, fsync off",
    }
    lines = [
        f"### {name} ({num_layers} layers, cache layer k={spec.layer})",
        "",
        f"Build: {docs} documents, {tokens} tokens, batch size {BATCH_SIZE}; best of "
        f"{best['plain']['runs_used']} alternating rounds. *Outside forward* is a run's time minus the time spent "
        "in the lower layers' forward, timed inside the same run: the build's extra work is measured without the "
        "forward's run-to-run noise (the overhead is the build's median minus the plain run's, over the plain "
        "run's median time). The last column lists every run with the CPU other processes took meanwhile, in "
        f"cores; * marks runs above {max_other} cores, which are run again and left out (unless all were).",
        "",
    ]
    build_rows = []
    for v, row in best.items():
        over = f"{row['overhead_pct']:+.1f}%" if "overhead_pct" in row else "—"
        med = f"{row['median_overhead_pct']:+.1f}%" if "median_overhead_pct" in row else "—"
        out = f"{row['outside_forward_overhead_pct']:+.1f}%" if "outside_forward_overhead_pct" in row else "—"
        rounds = " / ".join(
            f"{s:.2f} ({c:.2f}{'*' if c > max_other else ''})"
            for s, c in zip(row["runs_seconds"], row["runs_other_cores"], strict=True)
        )
        build_rows.append(
            [
                labels[v],
                f"{row['seconds']:.2f}",
                f"{row['docs_per_s']:.1f}",
                f"{row['tokens_per_s']:.0f}",
                over,
                med,
                f"{row['median_outside_forward_seconds']:.3f}",
                out,
                rounds,
            ]
        )
    lines += markdown_table(BUILD_COLUMNS, build_rows, align="lrrrrrrrl")
    plain_s = best["plain"]["seconds"]
    lines += [
        "",
        "Non-forward build steps, timed alone on the same documents (share of the plain forward time):",
        "",
    ]
    steps = [
        [label, f"{1e3 * parts[key]:.1f}", f"{pct(parts[key], plain_s):.1f}%"]
        for label, key in (
            ("Lower-weights fingerprint (sha256, once per build)", "lower_fingerprint_s"),
            ("Document keys (sha256 per document)", "document_keys_s"),
            ("`encode_documents` (offsets, word ids)", "encode_documents_s"),
            ("Plain tokenizer call (baseline's tokenization)", "plain_tokenize_s"),
            ("crc32 of all stored states", "crc32_hidden_s"),
        )
    ]
    lines += markdown_table(["Step", "ms", "% of plain"], steps, align="lrr")
    storage_rows = [
        ["Bytes per token on disk", f"{storage['bytes_per_token']:.1f}"],
        [f"Raw states ({storage['hidden_size']} × 2 bytes, float16)", storage["raw_bytes_per_token"]],
        ["Overhead over raw states", f"{storage['overhead_pct']:+.1f}%"],
        [
            f"Total on disk ({storage['documents']} docs, {storage['tokens']} tokens)",
            f"{storage['bytes'] / 1e6:.2f} MB",
        ],
        [
            "of which .hidden / .tokens / .index",
            f"{storage['bytes_hidden'] / 1e6:.2f} / {storage['bytes_tokens'] / 1e6:.2f} / "
            f"{storage['bytes_index'] / 1e6:.3f} MB",
        ],
    ]
    lines += ["", *markdown_table(["Storage", "Value"], storage_rows, align="lr")]
    lines += [
        "",
        f"Reads vs training step: random batches of {step['batch_size']} documents (seeded); "
        f"{reads['verify']['batches']} batches read, {step['batches']} steps timed after {step['warmup_batches']} "
        f"warm-up (mean padded batch {step['mean_tokens_padded']:.0f} tokens). "
        + (
            f"The step time uses the {step['steps_used']} steps no other process slowed down."
            if step["steps_quiet"]
            else "**Other processes took CPU during every step: the step time is inflated.**"
        ),
        "",
    ]
    per_batch = [
        [label, f"{r['mean_ms']:.2f}", f"{r['median_ms']:.2f}", f"{r['pct_of_step']:.2f}%"]
        for label, r in (
            ("`read_batch`, verify_reads=True (warm page cache)", reads["verify"]),
            ("`read_batch`, verify_reads=False (warm page cache)", reads["no_verify"]),
            (f"`read_batch`, verify_reads=True, files evicted from page cache ({cold['batches']} batches)", cold),
        )
    ]
    per_batch.append(
        [
            f"Training step, layers {spec.layer + 1}..{num_layers} + head (forward, backward, AdamW)",
            f"{step['mean_ms']:.1f}",
            f"{step['median_ms']:.1f}",
            "100%",
        ]
    )
    lines += markdown_table(["Per batch", "Mean ms", "Median ms", "% of a step"], per_batch, align="lrrr")
    return "\n".join(lines)


def targets_table(rows: list[dict[str, Any]], specs: Sequence[ModelSpec]) -> str:
    header = [
        "Model",
        f"Build overhead (fsync on) < {TARGET_PCT:.0f}%: best-of runs",
        "same, measured outside the forward",
        f"Read (verified) < {TARGET_PCT:.0f}% of a step",
        f"Bytes overhead over raw float16 < {TARGET_PCT:.0f}%",
    ]
    table = []
    for spec in specs:
        s = model_summary(rows, spec.name)
        table.append(
            [
                spec.name,
                f"{s['build_overhead_pct']:+.1f}% ({_ok(s['build_overhead_pct'], TARGET_PCT)})",
                f"{s['build_overhead_outside_forward_pct']:+.1f}% "
                f"({_ok(s['build_overhead_outside_forward_pct'], TARGET_PCT)})",
                f"{s['read_pct_of_step']:.2f}% ({_ok(s['read_pct_of_step'], TARGET_PCT)})",
                f"{s['storage_bytes_overhead_pct']:+.1f}% ({_ok(s['storage_bytes_overhead_pct'], TARGET_PCT)})",
            ]
        )
    return "\n".join(markdown_table(header, table))


def render_markdown(
    machine: dict[str, Any],
    rows: list[dict[str, Any]],
    specs: Sequence[ModelSpec],
    layers: dict[str, int],
    quick: bool,
    max_other: float,
) -> tuple[str, str]:
    """The full report and the part printed to stdout (the tables)."""
    tables = "\n\n".join(
        [
            "## Targets",
            targets_table(rows, specs),
            "## Per model",
            *(model_table(rows, spec, layers[spec.name], max_other) for spec in specs),
        ]
    )
    intro = (
        "# Cache benchmark\n\n"
        + ("**Quick smoke run: the sizes are too small for the figures to mean much.**\n\n" if quick else "")
        + f"Generated by `benchmarks/cache.py` on {machine['date']}: {machine['cpu']}, {machine['cpus']} CPUs "
        f"({machine['threads']} torch threads), {machine['machine']}, Python {machine['python']}, "
        f"torch {machine['torch']}, transformers {machine['transformers']}; caches written to "
        f"{machine['work_dir_filesystem']}. Data: the first distinct documents of `sci-cite/train.jsonl`.\n\n"
        "Absolute times only compare within one run: the machine may be shared and noisy. Each build variant is "
        "the best of alternating rounds; a run during which other processes took CPU (from `/proc/stat`) is run "
        "again and left out, and so is such a training step. *Build overhead* is `build_cache` (tokenization "
        "with offsets, document keys, weight fingerprint, forward, float16 conversion, crc32, writes, fsync, "
        "manifest) against a plain tokenize + sort + batch + forward of the same k layers with the output thrown "
        "away; the model is loaded before either. *Reads* come from the OS page cache unless marked evicted.\n"
    )
    return intro + "\n" + tables + "\n", tables


def _rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


# ---- main ------------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny smoke run (well under a minute)")
    p.add_argument("--docs", type=int, help="documents per model (default: 600 for MiniLM-L6, 300 for MPNet-base)")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results", help="results directory")
    p.add_argument("--models", nargs="+", choices=[m.key for m in MODELS], default=[m.key for m in MODELS])
    p.add_argument("--repeats", type=int, help="alternating build rounds (default: 5 for MiniLM-L6, 3 for MPNet-base)")
    p.add_argument("--retries", type=int, help="extra tries of a run slowed down by other processes (default 1)")
    p.add_argument(
        "--max-other-cores",
        type=float,
        default=0.25,
        help="CPU (in cores) other processes may take during a run before it counts as slowed down (default 0.25)",
    )
    p.add_argument("--steps", type=int, help="timed training steps (default 10)")
    p.add_argument("--read-batches", type=int, help="batches read per variant (default 100)")
    p.add_argument("--work-dir", type=Path, help="where the temporary caches go (default: the system temp dir)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.retries is not None and args.retries < 0:
        p.error("--retries must be at least 0")
    for name in ("docs", "repeats", "steps", "read_batches"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not DATA.is_file():
        sys.exit(f"error: the benchmark data is missing: {DATA} (expected ../shared/data next to the repository).")
    transformers.utils.logging.disable_progress_bar()
    quick = args.quick
    settings = Settings(
        repeats=args.repeats or (1 if quick else None),
        retries=args.retries if args.retries is not None else (0 if quick else 1),
        max_other_cores=args.max_other_cores,
        read_batches=args.read_batches or (5 if quick else 100),
        cold_batches=3 if quick else 20,
        steps=args.steps or (1 if quick else 10),
        warmup_steps=1,
        seed=args.seed,
    )
    specs = [m for m in MODELS if m.key in args.models]
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    layers: dict[str, int] = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="embrecycle-bench-", dir=args.work_dir) as tmp:
        work = Path(tmp)
        machine = machine_info(work)
        for spec in specs:
            n = args.docs or (QUICK_DOCS[spec.key] if quick else spec.default_docs)
            docs = load_documents(DATA, n)
            print(f"{spec.name} (k={spec.layer}): {len(docs)} documents", flush=True)
            torch.manual_seed(settings.seed)
            load_s, encoder = timed(lambda spec=spec: load_encoder(spec.path(), spec.layer))
            print(f"  model loaded in {load_s:.1f} s (not timed below)", flush=True)
            layers[spec.name] = encoder.split.num_layers
            build_rows, cache_dir = bench_build(spec, encoder, docs, work, settings)
            rows += build_rows
            rows.append(bench_build_parts(spec, encoder, docs, cache_dir))
            rows.append(bench_storage(spec, cache_dir))
            print("  reads and training steps...", flush=True)
            rows += bench_read_vs_step(spec, encoder, cache_dir, settings)
            _rmtree(cache_dir)
            del encoder
            gc.collect()
    machine["total_seconds"] = time.perf_counter() - started
    report, tables = render_markdown(machine, rows, specs, layers, quick, settings.max_other_cores)
    result = {
        "machine": machine,
        "settings": {**dataclasses.asdict(settings), "quick": quick, "batch_size": BATCH_SIZE, "data": str(DATA)},
        "summary": {spec.name: model_summary(rows, spec.name) for spec in specs},
        "rows": rows,
    }
    write_results(result, args.out, "cache", report)
    print()
    print(tables)
    print(f"\nwrote {args.out / 'cache.json'} and {args.out / 'cache.md'} in {machine['total_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
