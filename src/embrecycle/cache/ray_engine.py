"""Build a cache with Ray: Ray Data spreads the lower layers over a pool of model actors.

The driver does what a local build does up to the forward passes: it keys every document,
skips cached ones, and plans the same length-sorted batches (saved, so a re-run after a crash
plans the same). Consecutive batches are grouped into chunks, one Ray Data row each, and
``map_batches`` hands the chunks to a pool of actors; each actor loads the lower layers once
(on a GPU when ``gpus_per_worker`` > 0), computes its chunk and writes it as one shard, named
after the chunk's documents, in a private staging folder. It then publishes the shard into the
cache (a directory: renamed in; a URL: uploaded), data files first and index last, so a reader
never sees half a shard.

Fault tolerance follows: a worker that dies loses only its in-flight chunk; Ray restarts the
actor and retries the chunk, which rewrites the same shard name. A driver that dies loses
nothing published: a re-run finds those documents in the cache and plans the rest.

The result is one cache, the same as a local build of the corpus: the same manifest settings,
the same documents and tokens, states from the same batches (equal up to the floating-point
differences between thread counts or devices).

Ray is an optional dependency: ``pip install 'embrecycle[ray]'``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import Checks, Settings, setting
from ..encoder import load_encoder
from ..errors import ConfigError, MissingDependencyError
from ..hardware import Hardware, configure_threads, resolve_hardware
from ..progress import progress_bar
from ..tokenization import encode_documents
from .builder import (
    BuildConfig,
    BuildSummary,
    cache_settings_for,
    check_documents,
    lower_states,
    plan_batches,
    triage,
)
from .location import SHARD_FILES, Remote, is_remote, local_path
from .settings import CacheSettings
from .shard import SHARD_DIR, Entry, ShardWriter, shard_paths
from .store import Cache, Document

__all__ = ["RayOptions", "RayPool", "build_cache_ray"]

PLAN_SHARD = "ray-driver"
"""Name under which the driver saves its batch plan (no shard of this name is ever written)."""


@dataclass
class RayPool(Settings):
    """The Ray cluster and actor pool a distributed job runs on (``predict --engine ray``).

    A worker that dies is restarted and its work item retried (Ray Data's default for actor pools:
    ``max_restarts=-1``, ``max_task_retries=-1``); an exception raised by the model code is not
    retried and ends the job (finished work stays: re-run to resume).
    """

    settings_name = "ray"

    address: str | None = setting(
        None, "Ray cluster to join (auto, ray://host:10001; engine ray); default: the running one, else a local one."
    )
    num_workers: int = setting(2, "Model actors, each holding the model once (engine ray).")
    gpus_per_worker: float = setting(0.0, "GPUs per actor; 0 runs on the CPU (engine ray).")
    cpus_per_worker: float = setting(1.0, "CPUs per actor, its torch thread count (engine ray).")

    def problems(self) -> list[str]:
        return (
            Checks()
            .positive(num_workers=self.num_workers, cpus_per_worker=self.cpus_per_worker)
            .non_negative(gpus_per_worker=self.gpus_per_worker)
            .problems
        )


@dataclass
class RayOptions(RayPool):
    """How the Ray engine builds a cache (``cache build --engine ray``): the pool, and chunks of batches."""

    batches_per_shard: int = setting(16, "Batches per chunk; each chunk becomes one shard (engine ray).")

    def problems(self) -> list[str]:
        return super().problems() + Checks().positive(batches_per_shard=self.batches_per_shard).problems


def import_ray() -> Any:
    """The ``ray`` module with Ray Data, or a clear error naming the extra to install."""
    try:
        import ray
        import ray.data
    except ImportError as e:
        raise MissingDependencyError(
            f"the Ray engine needs Ray Data, which is not installed ({e}). Install it with "
            "`pip install 'embrecycle[ray]'`, or build with the local engine (the default)."
        ) from e
    return ray


def chunk_name(batches: Sequence[Sequence[bytes]]) -> str:
    """Shard name of a chunk: a hash of its documents' keys, so a retried chunk rewrites the same shard."""
    h = hashlib.sha256(b"embrecycle/chunk/v1\0")
    for batch in batches:
        h.update(b"".join(batch) + b"\0")
    return f"ray-{h.hexdigest()[:20]}"


def build_cache_ray(
    documents: Sequence[Document],
    out: str | os.PathLike[str],
    config: BuildConfig,
    options: RayOptions | None = None,
    sources: Sequence[str] | None = None,
    progress: bool = True,
    actor_class: type | None = None,
) -> BuildSummary:
    """Compute and store the layer-k states of every document not yet in the cache at ``out``, with Ray.

    Same arguments and result as :func:`~embrecycle.cache.build_cache`, plus ``options``. The
    cache directory must be reachable from every worker: a shared filesystem path, or a URL
    (``s3://...``; see :mod:`embrecycle.cache.location`).

    Args:
        actor_class: A subclass of :class:`LowerLayersActor` (for tests and instrumentation).

    Raises:
        MissingDependencyError: Ray is not installed.
        InputDataError: no document has any content.
    """
    check_documents(documents)
    ray = import_ray()
    options = options or RayOptions()
    start = time.perf_counter()
    encoder = load_encoder(config.model, config.layer, config.revision, config.attn_implementation)
    settings = cache_settings_for(encoder, config, ray_precision(config, options))
    cache = Cache.create(out, settings)
    summary = BuildSummary(documents=len(documents))
    input_keys, todo = triage(cache, documents, summary)
    if todo:
        batches, encoded = plan_batches(
            cache, PLAN_SHARD, documents, input_keys, todo, settings, config, sources, encoder.tokenizer
        )
        summary.truncated = sum(encoded[k].truncated for k in todo)
        del encoder  # the driver needs the tokenizer only; the actors hold the model
        rows = []
        for i in range(0, len(batches), options.batches_per_shard):
            chunk = batches[i : i + options.batches_per_shard]
            rows.append(
                {
                    "shard": chunk_name(chunk),
                    "payload": json.dumps(
                        [
                            [[k.hex(), documents[input_keys[k]], k in todo] for k in batch]  # store only the misses
                            for batch in chunk
                        ],
                        ensure_ascii=False,
                    ),
                }
            )
        total = sum(len(b) for b in batches)
        _run(ray, rows, total, cache, config, settings, options, summary, progress, actor_class or LowerLayersActor)
        shard_paths(cache.root, PLAN_SHARD)["plan.npz"].unlink(missing_ok=True)
        if cache.remote is not None:
            cache.remote.pull_meta()
        cache.update_manifest_stats()  # the shards' indexes, merged into the manifest's statistics
    # (nothing to compute: nothing is written, so a read-only cache works)
    summary.cache = cache.stats()
    summary.seconds = time.perf_counter() - start
    return summary


def ray_precision(config: BuildConfig, options: RayOptions) -> str:
    """The compute precision of the workers: as given, or for ``auto`` what this (the driver's) machine resolves
    for the workers' device kind (CPU workers are taken to be like the driver; GPU workers get bf16 only when the
    driver sees a bf16-capable CUDA device: pass --precision for a cluster whose GPUs differ)."""
    if config.precision != "auto":
        if config.precision == "fp16" and not options.gpus_per_worker:
            raise ConfigError("precision='fp16' needs GPU workers (--gpus-per-worker > 0); use bf16 or fp32.")
        return config.precision
    if options.gpus_per_worker:
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    return resolve_hardware("cpu", "auto").precision


def _run(
    ray: Any,
    rows: list[dict[str, Any]],
    total: int,
    cache: Cache,
    config: BuildConfig,
    settings: CacheSettings,
    options: RayOptions,
    summary: BuildSummary,
    progress: bool,
    actor_class: type,
) -> None:
    if not ray.is_initialized():
        ray.init(address=options.address, include_dashboard=False, log_to_driver=False)
    ds = ray.data.from_items(rows, override_num_blocks=len(rows))
    results = ds.map_batches(
        actor_class,
        batch_size=1,
        concurrency=options.num_workers,
        num_cpus=options.cpus_per_worker,
        num_gpus=options.gpus_per_worker or None,
        fn_constructor_kwargs={
            "config": _config_dict(config),
            "settings": settings.to_dict(),
            "location": cache.location,
        },
    )
    bar = progress_bar(total, f"cache layer {settings.layer} (ray)", "doc", enabled=progress)
    t0 = time.perf_counter()
    for out in results.iter_rows():
        summary.computed += int(out["computed"])
        summary.tokens_computed += int(out["tokens"])
        summary.bytes_written += int(out["bytes"])
        bar.update(int(out["documents"]))
        bar.set_postfix(docs_s=f"{bar.n / max(time.perf_counter() - t0, 1e-9):.1f}")
    bar.close()


def _config_dict(config: BuildConfig) -> dict[str, Any]:
    return {k: getattr(config, k) for k in ("model", "layer", "revision", "attn_implementation", "fsync")}


class LowerLayersActor:
    """A Ray Data actor: holds the lower layers once, turns chunks of planned batches into published shards.

    Args:
        config: The build's model settings (model, layer, revision, attn_implementation, fsync).
        settings: The cache's settings (checked against the model this actor loads).
        location: The cache directory or URL.
    """

    def __init__(self, config: dict[str, Any], settings: dict[str, Any], location: str) -> None:
        self.settings = CacheSettings.from_dict(settings)
        self.location = location
        self.fsync = bool(config["fsync"])
        device = "cuda" if torch.cuda.is_available() and os.environ.get("CUDA_VISIBLE_DEVICES") else "cpu"
        self.encoder = load_encoder(config["model"], config["layer"], config["revision"], config["attn_implementation"])
        self.encoder.split.to(device)
        self.hardware = Hardware(torch.device(device), self.settings.precision, configure_threads())
        found = self.encoder.lower_fingerprint()
        if found != self.settings.lower_fingerprint:
            raise ConfigError(
                f"the worker loaded {config['model']!r} with lower-layer weights {found[:16]}, but the cache "
                f"holds {self.settings.lower_fingerprint[:16]}: install the same model (and revision) on every "
                "node."
            )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        pairs = zip(batch["shard"], batch["payload"], strict=True)
        stats = [self.process(str(name), str(payload)) for name, payload in pairs]
        return {k: np.array([s[k] for s in stats]) for k in ("shard", "documents", "computed", "tokens", "bytes")}

    def process(self, name: str, payload: str) -> dict[str, Any]:
        """Compute one chunk and publish it as shard ``name``."""
        chunk = json.loads(payload)
        s, split, tokenizer = self.settings, self.encoder.split, self.encoder.tokenizer
        pad_id = tokenizer.pad_token_id or 0
        staging = Path(tempfile.mkdtemp(prefix="stage-", dir=self._staging_parent()))
        documents = computed = tokens = 0
        try:
            writer = ShardWriter(staging, name, s.hidden_size, s.dtype, fsync=self.fsync)
            try:
                for batch in chunk:
                    keys = [bytes.fromhex(k) for k, _, _ in batch]
                    docs = [d for _, d, _ in batch]
                    encs = encode_documents(tokenizer, docs, s.max_length, s.truncation)
                    stored = lower_states(split, encs, pad_id, self.hardware, s.dtype, [f"key {k.hex()}" for k in keys])
                    entries = [
                        Entry(k, stored[j, : len(e.input_ids)], e.token_table(), e.truncated)
                        for j, (k, e, (_, _, store)) in enumerate(zip(keys, encs, batch, strict=True))
                        if store
                    ]
                    writer.append(entries)
                    documents += len(batch)
                    computed += len(entries)
                    tokens += sum(len(e.hidden) for e in entries)
            finally:
                writer.close()
            written = self._publish(staging, name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return {"shard": name, "documents": documents, "computed": computed, "tokens": tokens, "bytes": written}

    def _staging_parent(self) -> str | None:
        """Stage next to the shards of a local cache (so publishing is a rename), in a temp dir otherwise."""
        if is_remote(self.location):
            return None
        parent = local_path(self.location) / ".staging"
        parent.mkdir(parents=True, exist_ok=True)
        return str(parent)

    def _publish(self, staging: Path, name: str) -> int:
        """Move (or upload) a finished shard into the cache: data files first, the index last."""
        src = staging / SHARD_DIR
        written = sum((src / f"{name}.{kind}").stat().st_size for kind in SHARD_FILES)
        if is_remote(self.location):
            Remote(self.location, mirror=staging).push_shard(name, root=staging)
            return written
        dst = local_path(self.location) / SHARD_DIR
        dst.mkdir(parents=True, exist_ok=True)
        for kind in SHARD_FILES:  # the index last
            os.replace(src / f"{name}.{kind}", dst / f"{name}.{kind}")
        return written
