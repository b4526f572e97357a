"""Build or extend a cache: run embeddings + layers 1..k once per document and store the states.

The workflow, top to bottom:

1. load the encoder (or take a loaded one) and derive the cache settings;
2. open or create the cache (settings must match an existing one);
3. key every document by content; skip empty ones, duplicates and those already cached;
4. plan length-sorted batches and save the plan next to the shard, so that a
   resumed build recomputes exactly the same batches (byte-identical states);
5. run the lower layers batch by batch in eval mode under ``torch.inference_mode()``
   and append each batch to the shard (crash-safe, see ``shard.py``);
6. drop the plan and refresh the manifest's statistics.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from ..config import Checks, Settings, setting
from ..encoder import LoadedEncoder, check_max_length, load_encoder, model_problems
from ..errors import ConfigError, InputDataError
from ..hardware import (
    DEVICE_HELP,
    PRECISION_CHOICES,
    PRECISION_HELP,
    Hardware,
    autocast,
    hardware_problems,
    resolve_hardware,
)
from ..progress import progress_bar
from ..split import SplitEncoder
from ..tokenization import Encoded, encode_documents, is_empty, pad_ids
from .codecs import codec_for
from .format import STORAGE_DTYPES
from .settings import TRUNCATION_MODES, CacheSettings
from .shard import Entry, ShardWriter, shard_name_problem, shard_paths
from .store import Cache, Document

__all__ = ["BuildConfig", "BuildSummary", "build_cache", "cache_settings_for", "check_documents"]

log = logging.getLogger(__name__)


@dataclass
class BuildConfig(Settings):
    """Settings of a cache build (what ``embrecycle cache build`` takes)."""

    model: str = setting(help="Model name (hub id) or local directory.")
    layer: int = setting(help="Layers run before caching (0..N; 0 = the embeddings' output).")
    max_length: int | None = setting(None, "Max tokens per document (default: the model's limit, at most 512).")
    truncation: str = setting(
        "truncate", "'truncate' longer documents (counted) or stop with an 'error'.", choices=TRUNCATION_MODES
    )
    dtype: str = setting("float16", "Storage dtype of the states.", choices=list(STORAGE_DTYPES))
    batch_size: int = setting(32, "Documents per forward pass.")
    revision: str | None = setting(None, "Hub revision (branch, tag or commit) of the model.")
    attn_implementation: str | None = setting(
        None, "Attention kernel, sdpa or eager (default: the fastest the family has).", choices=("sdpa", "eager")
    )
    device: str = setting("auto", f"Where the lower layers run: {DEVICE_HELP}.")
    precision: str = setting(
        "auto",
        f"Compute precision of the lower layers: {PRECISION_HELP}. Part of the cache's settings.",
        choices=PRECISION_CHOICES,
    )
    shard: str | None = setting(None, "Shard name, for several writers on one cache (default: a free local shard).")
    fsync: bool = setting(True, "Flush each batch to stable storage (--no-fsync skips it).")

    def problems(self) -> list[str]:
        return (
            Checks()
            .positive(batch_size=self.batch_size, max_length=self.max_length)
            .choice("dtype", self.dtype, STORAGE_DTYPES)
            .choice("truncation", self.truncation, TRUNCATION_MODES)
            .choice("attn_implementation", self.attn_implementation, ("sdpa", "eager"), optional=True)
            .extend(hardware_problems(self.device, self.precision))
            .extend(self._shard_problems())
            .extend(model_problems(self.model, self.revision, self.max_length))
            .problems
        )

    def _shard_problems(self) -> list[str]:
        problem = None if self.shard is None else shard_name_problem(self.shard)
        return [problem] if problem else []


@dataclass
class BuildSummary:
    """What a build did, and what it already computed for the caller.

    ``opened`` is the cache as it stands after the build, ``keys`` the content key of each input document
    (None for an empty one) and ``encoded`` the tokenization of every document the build computed, so a
    caller (training, prediction) needs neither to reopen the cache, re-key the documents nor tokenize
    them again (a document that was already cached has its tokens in the cache: ``Cache.encoded(i)``).
    """

    documents: int = 0
    computed: int = 0
    reused: int = 0
    skipped_empty: int = 0
    duplicates: int = 0
    truncated: int = 0
    tokens_computed: int = 0
    bytes_written: int = 0
    seconds: float = 0.0
    cache: dict = field(default_factory=dict)
    opened: Cache | None = field(default=None, repr=False, compare=False)
    keys: list[bytes | None] = field(default_factory=list, repr=False, compare=False)
    encoded: dict[bytes, Encoded] = field(default_factory=dict, repr=False, compare=False)

    def indices(self) -> list[int | None]:
        """Each input document's entry in :attr:`opened` (None: empty)."""
        assert self.opened is not None
        return [None if k is None else self.opened.index_of(k) for k in self.keys]

    @property
    def docs_per_s(self) -> float:
        return self.computed / self.seconds if self.seconds else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_computed / self.seconds if self.seconds else 0.0

    def __str__(self) -> str:
        bpt = self.bytes_written / self.tokens_computed if self.tokens_computed else 0.0
        return (
            f"documents: {self.documents} in input, {self.computed} computed, {self.reused} reused, "
            f"{self.skipped_empty} skipped (empty), {self.duplicates} duplicates, {self.truncated} truncated\n"
            f"written: {self.bytes_written / 1e6:.1f} MB for {self.tokens_computed} tokens ({bpt:.0f} bytes/token) "
            f"in {self.seconds:.1f} s ({self.docs_per_s:.1f} docs/s, {self.tokens_per_s:.0f} tokens/s)\n"
            f"cache: {self.cache.get('documents', 0)} documents, {self.cache.get('tokens', 0)} tokens, "
            f"{self.cache.get('bytes', 0) / 1e6:.1f} MB on disk ({self.cache.get('bytes_per_token', 0)} bytes/token)"
        )


def default_max_length(encoder: LoadedEncoder) -> int:
    return max_length_for(encoder.split.config, encoder.tokenizer)


def max_length_for(model_config: Any, tokenizer: PreTrainedTokenizerBase) -> int:
    """Tokens per document a cache keeps when no max length is given: the model's and tokenizer's limit, <= 512."""
    limit = int(getattr(model_config, "max_position_embeddings", 512))
    if model_config.model_type in ("roberta", "xlm-roberta", "camembert", "mpnet"):
        limit -= 2  # positions start after the padding index
    tok_limit = getattr(tokenizer, "model_max_length", limit) or limit
    return max(2, min(512, limit, int(tok_limit)))


def cache_settings_for(encoder: LoadedEncoder, config: BuildConfig, precision: str) -> CacheSettings:
    """The settings a cache built by ``encoder`` under ``config`` has, its states computed in ``precision``.

    Raises:
        ConfigError: ``config.max_length`` exceeds the model's position limit (before any directory is made).
    """
    split = encoder.split
    check_max_length(config.max_length, split.config, encoder.model_name)
    return CacheSettings(
        model=encoder.model_name,
        model_revision=encoder.revision,
        model_type=split.config.model_type,
        lower_fingerprint=encoder.lower_fingerprint(),
        layer=split.layer,
        num_layers=split.num_layers,
        hidden_size=split.hidden_size,
        tokenizer=encoder.model_name,
        tokenizer_fingerprint=encoder.tokenizer_fingerprint(),
        max_length=config.max_length or default_max_length(encoder),
        truncation=config.truncation,
        dtype=config.dtype,
        precision=precision,
    )


def check_documents(documents: Sequence[Document]) -> None:
    """Raise :class:`InputDataError` when there is nothing to cache: no document, or only empty ones.

    Checked before a model loads or a cache directory is made (an empty cache would look like a finished one).
    """
    if not documents or all(is_empty(d) for d in documents):
        raise InputDataError(
            f"no documents to cache: {len(documents)} given, none with any text or word. Check the input "
            "(its file, format and text field)."
        )


def build_cache(
    documents: Sequence[Document],
    out: str | os.PathLike[str],
    config: BuildConfig,
    encoder: LoadedEncoder | None = None,
    sources: Sequence[str] | None = None,
    progress: bool = True,
    warn_truncated: bool = True,
) -> BuildSummary:
    """Compute and store the layer-k states of every document not yet in the cache at ``out``.

    Empty documents (blank text, no words) are skipped and counted, not stored.

    Args:
        documents: Texts, or lists of words for pre-tokenized input.
        out: Cache directory (created if absent), or a URL (``s3://...``; built in a local mirror, uploaded
            shard by shard, see :mod:`embrecycle.cache.location`).
        config: Build settings.
        encoder: An already loaded encoder (must match ``config.model`` and ``config.layer``); it is moved to
            ``config.device``.
        sources: ``file:line`` of each document, for error messages.
        progress: Show a progress bar.
        warn_truncated: Warn about the truncated documents this build computes (off for a caller that counts
            every document itself, the cached ones too: training).

    Raises:
        InputDataError: no document has any content (see :func:`check_documents`).
    """
    check_documents(documents)
    start = time.perf_counter()
    hardware = resolve_hardware(config.device, config.precision)
    if encoder is None:
        encoder = load_encoder(config.model, config.layer, config.revision, config.attn_implementation)
    elif encoder.layer != config.layer:
        raise ConfigError(f"the given encoder is split at layer {encoder.layer}, the config asks for {config.layer}.")
    settings = cache_settings_for(encoder, config, hardware.precision)
    cache = Cache.create(out, settings, documents)
    summary = BuildSummary(documents=len(documents))
    input_keys, todo = triage(cache, documents, summary)
    if not todo:  # everything is cached: write nothing, take no lock (the cache may be read-only)
        return _finish(summary, cache, start)

    cache.ensure_settings_copy()
    writer = cache.writer(config.shard, fsync=config.fsync)
    try:
        batches, summary.encoded = plan_batches(
            cache,
            writer.name,
            documents,
            input_keys,
            todo,
            settings,
            config,
            sources,
            encoder.tokenizer,
            warn_truncated,
        )

        def describe(key: bytes) -> str:
            i = input_keys[key]
            return sources[i] if sources else f"#{i + 1} of the input (key {key.hex()[:16]})"

        _run(cache, writer, encoder, hardware, batches, summary.encoded, settings, summary, progress, describe)
        shard_paths(cache.root, writer.name)["plan.npz"].unlink(missing_ok=True)
    except BaseException:
        writer.close()
        if cache.remote is not None:  # what was computed reaches the URL even when interrupted
            with contextlib.suppress(Exception):
                cache.sync()
        raise
    writer.close()
    if cache.remote is not None:
        cache.sync()  # upload the new shard (data first, index last), then the manifest
    else:
        cache.update_manifest_stats()
    summary.bytes_written = writer.bytes_written
    return _finish(summary, cache, start)


def _finish(summary: BuildSummary, cache: Cache, start: float) -> BuildSummary:
    summary.cache = cache.stats()
    summary.opened = cache  # refreshed by the manifest update: it holds what this build wrote
    summary.seconds = time.perf_counter() - start
    return summary


def triage(
    cache: Cache, documents: Sequence[Document], summary: BuildSummary
) -> tuple[dict[bytes, int], dict[bytes, int]]:
    """Key every document; count empty ones, duplicates and cache hits in ``summary``.

    Returns ``(input_keys, todo)``: every non-empty input document's key and the ones to compute,
    each mapped to its position in ``documents``; ``summary.keys`` gets each input document's key.
    """
    todo: dict[bytes, int] = {}
    input_keys: dict[bytes, int] = {}
    summary.keys = [None] * len(documents)
    for i, doc in enumerate(documents):
        if is_empty(doc):
            summary.skipped_empty += 1
            continue
        key = cache.key(doc)
        summary.keys[i] = key
        if key in input_keys:
            summary.duplicates += 1
            continue
        input_keys[key] = i
        if cache.index_of(key) is not None:
            summary.reused += 1
        else:
            todo[key] = i
    return input_keys, todo


def plan_batches(
    cache: Cache,
    shard: str,
    documents: Sequence[Document],
    input_keys: dict[bytes, int],
    todo: dict[bytes, int],
    settings: CacheSettings,
    config: BuildConfig,
    sources: Sequence[str] | None,
    tokenizer: PreTrainedTokenizerBase,
    warn: bool = True,
) -> tuple[list[list[bytes]], dict[bytes, Encoded]]:
    """Batches of keys to compute: the unfinished batches of an interrupted build first, then new ones.

    A batch of a saved plan is kept as it was (and recomputed whole) when all its
    documents are in this input, so that a resumed build gives the same bytes.
    """
    plan_path = shard_paths(cache.root, shard)["plan.npz"]
    kept: list[list[bytes]] = []
    planned: set[bytes] = set()
    keys, bounds = _saved_plan(plan_path)
    if len(bounds):
        for a, b in itertools.pairwise(bounds):
            batch = [k.tobytes() for k in keys[a:b]]
            if any(k in todo for k in batch) and all(k in input_keys for k in batch):
                kept.append(batch)
                planned.update(batch)
    need = list(dict.fromkeys([*planned, *todo]))
    docs = [documents[input_keys[k]] for k in need]
    srcs = [sources[input_keys[k]] for k in need] if sources else None
    encoded = dict(
        zip(need, encode_documents(tokenizer, docs, settings.max_length, settings.truncation, srcs, warn), strict=True)
    )
    fresh = sorted((k for k in todo if k not in planned), key=lambda k: (len(encoded[k].input_ids), k))
    batches = kept + [fresh[i : i + config.batch_size] for i in range(0, len(fresh), config.batch_size)]
    flat = [k for b in batches for k in b]
    bounds = np.cumsum([0] + [len(b) for b in batches])
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = plan_path.with_name(plan_path.name + ".tmp.npz")
    np.savez(tmp, keys=np.frombuffer(b"".join(flat), dtype="V32"), bounds=bounds)
    os.replace(tmp, plan_path)
    return batches, encoded


def _saved_plan(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The keys and batch bounds of an interrupted build's plan (none when absent or unreadable)."""
    none = (np.empty(0, "V32"), np.empty(0, np.int64))
    if not path.exists():
        return none
    try:
        with np.load(path, allow_pickle=False) as saved:
            keys, bounds = saved["keys"], saved["bounds"]
        if keys.dtype != np.dtype("V32") or bounds.ndim != 1 or (len(bounds) and bounds[-1] > len(keys)):
            raise ValueError("inconsistent keys and bounds")
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as e:
        log.warning("ignoring the damaged batch plan %s (%s): planning afresh", path, e)
        return none
    return keys, bounds


def _run(
    cache: Cache,
    writer: ShardWriter,
    encoder: LoadedEncoder,
    hardware: Hardware,
    batches: list[list[bytes]],
    encoded: dict[bytes, Encoded],
    settings: CacheSettings,
    summary: BuildSummary,
    progress: bool,
    describe: Callable[[bytes], str],
) -> None:
    split = encoder.split
    split.eval()
    split.to(hardware.device)
    pad_id = encoder.tokenizer.pad_token_id or 0
    total = sum(len(b) for b in batches)
    bar = progress_bar(total, f"cache layer {settings.layer}", "doc", enabled=progress)
    t0 = time.perf_counter()
    tokens = 0
    for batch in batches:
        encs = [encoded[k] for k in batch]
        stored = lower_states(split, encs, pad_id, hardware, settings.dtype, [describe(k) for k in batch])
        entries = [
            Entry(k, stored[j, : len(e.input_ids)], e.token_table(), e.truncated)
            for j, (k, e) in enumerate(zip(batch, encs, strict=True))
            if cache.index_of(k) is None  # a kept batch may hold documents written before the crash
        ]
        writer.append(entries)
        summary.computed += len(entries)
        summary.truncated += sum(e.truncated for e in entries)
        n_tok = sum(len(e.hidden) for e in entries)
        summary.tokens_computed += n_tok
        tokens += n_tok
        bar.update(len(batch))
        bar.set_postfix(tokens_s=f"{tokens / max(time.perf_counter() - t0, 1e-9):.0f}")
    bar.close()


def lower_states(
    split: SplitEncoder,
    encs: Sequence[Encoded],
    pad_id: int,
    hardware: Hardware,
    dtype: str,
    names: Sequence[str] | None = None,
) -> np.ndarray:
    """One padded batch through the embeddings and layers 1..k on ``hardware``, in the cache's storage dtype
    (on the CPU).

    Raises:
        UnstorableStatesError: a document's states hold NaN or inf, or exceed what ``dtype`` stores (``names``:
            one name per document for the message; default its position in the batch).
    """
    ids, mask = pad_ids(encs, pad_id)
    device = hardware.device
    with torch.inference_mode(), autocast(hardware):
        hidden = split.lower(ids.to(device), mask.to(device)).to("cpu")
    codec = codec_for(dtype)
    names = names if names is not None else [f"#{j + 1} of its batch" for j in range(len(encs))]
    codec.check_storable(hidden, names, mask.sum(dim=1))
    return codec.encode(hidden)
