"""Turn a cache into another storage dtype without running the model (``embrecycle cache convert``).

Each document's stored states are decoded from the source's dtype and encoded in the new one,
then appended to the destination's shard like any build batch: crash-safe (a kill loses at most
the batch in flight) and resumable (a re-run converts only the documents the destination lacks).

The destination keeps its source's document keys: its manifest records the fingerprint they were
made under (``key_fingerprint``) and what it was converted from (``converted_from``), so every
lookup, a later ``cache build`` into it, and training on it work as on any cache. Converting
from float32 gives the very codes a build in the new dtype stores; from float16 or bfloat16 the
codes are those of the rounded states.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

from tqdm.auto import tqdm

from ..errors import CacheMismatchError, ConfigError
from .codecs import CODECS, canonical_dtype
from .format import STORAGE_DTYPES
from .location import is_remote, local_path
from .settings import MANIFEST_NAME, CacheSettings, is_own_file, new_manifest, read_manifest, write_manifest
from .store import Cache, open_cache

__all__ = ["ConvertSummary", "convert_cache"]

BATCH_DOCUMENTS = 256
"""Documents appended per shard write (the unit a kill can lose)."""


@dataclass
class ConvertSummary:
    """What one conversion did."""

    out: str
    source_dtype: str
    dtype: str
    documents: int
    converted: int
    already_there: int
    seconds: float
    source_bytes: int
    bytes: int

    def __str__(self) -> str:
        ratio = self.bytes / self.source_bytes if self.source_bytes else 0.0
        return (
            f"converted {self.converted} documents from {self.source_dtype} to {self.dtype} in {self.seconds:.1f} s "
            f"({self.already_there} already there) -> {self.out}: {self.bytes / 1e6:.1f} MB, {ratio:.1%} of the "
            f"source's {self.source_bytes / 1e6:.1f} MB"
        )


def convert_cache(
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    dtype: str,
    progress: bool = True,
    fsync: bool = True,
    batch_documents: int = BATCH_DOCUMENTS,
) -> ConvertSummary:
    """Write the cache at ``source`` in storage dtype ``dtype`` (a name of :data:`~.codecs.CODECS` or an alias)
    to the directory ``out``; resumes a conversion that was interrupted.

    Raises:
        ConfigError: an unknown dtype, one that cannot store these states, or ``out`` is ``source``.
        CacheCorruptedError: the source is damaged (repair it first).
        CacheMismatchError: ``out`` holds another cache.
        UnstorableStatesError: a document's states exceed what ``dtype`` holds (the batches written before its
            batch are kept; a re-run converts the rest).
    """
    if dtype not in STORAGE_DTYPES:
        raise ConfigError(f"dtype={dtype!r}: choose one of {list(STORAGE_DTYPES)}.")
    if is_remote(out):
        raise ConfigError(f"--out {os.fspath(out)}: convert writes a local directory (copy it to the URL after).")
    src = open_cache(source)
    src.require_undamaged("convert")
    root = local_path(out)
    if src.remote is None and root.resolve() == src.root.resolve():
        raise ConfigError(f"--out {root} is the source cache: convert writes a new cache; choose another --out.")
    settings = replace(src.settings, dtype=canonical_dtype(dtype))  # validates the dtype against the width
    dst = _open_destination(root, src, settings)
    codec, hs = CODECS[settings.dtype], settings.hidden_size
    todo = [i for i in range(len(src)) if dst.index_of(src.keys[i].tobytes()) is None]
    t0 = time.perf_counter()
    bar = tqdm(total=len(todo), desc=f"convert to {settings.dtype}", unit="doc", disable=not progress)
    with dst.writer(fsync=fsync) as writer:
        for start in range(0, len(todo), batch_documents):
            entries = []
            for i in todo[start : start + batch_documents]:
                entry = src.stored_entry(i)  # checksummed
                states = src.codec.decode(entry.hidden, hs).float()
                name = f"key {src.keys[i].tobytes().hex()} (document {i + 1} of {src.location})"
                codec.check_storable(states.unsqueeze(0), [name])
                entry.hidden = codec.encode(states)
                entries.append(entry)
            writer.append(entries)
            bar.update(len(entries))
    bar.close()
    dst.refresh()
    dst.update_manifest_stats()
    return ConvertSummary(
        out=str(root),
        source_dtype=src.settings.dtype,
        dtype=settings.dtype,
        documents=len(src),
        converted=len(todo),
        already_there=len(src) - len(todo),
        seconds=time.perf_counter() - t0,
        source_bytes=int(src.stats()["bytes"]),
        bytes=int(dst.stats()["bytes"]),
    )


def _open_destination(root: Path, src: Cache, settings: CacheSettings) -> Cache:
    """The destination cache: created with the source's keys, or (a resumed conversion) checked to be it."""
    manifest = root / MANIFEST_NAME
    if manifest.exists():
        dst = Cache(root, read_manifest(root))
        made_from = dst.manifest.get("converted_from") or {}
        same_source = made_from.get("settings_fingerprint") == src.settings.fingerprint()
        if dst.fingerprint == src.fingerprint and same_source and dst.settings.dtype != settings.dtype:
            raise CacheMismatchError(
                f"--out {root} holds a conversion of this source to {dst.settings.dtype} ({len(dst)} of "
                f"{len(src)} documents), not {settings.dtype}: re-run with --dtype {dst.settings.dtype} to finish "
                "it, or choose another --out (or delete it) to convert to "
                f"{settings.dtype}."
            )
        if dst.settings != settings or dst.fingerprint != src.fingerprint:
            raise CacheMismatchError(
                f"--out {root} holds another cache (dtype {dst.settings.dtype}, made from "
                f"{dst.manifest.get('converted_from', {}).get('location', 'a build')}): choose another --out, or "
                "delete it to convert afresh."
            )
        dst.ensure_settings_copy()  # a conversion killed right after writing its manifest has none yet
        return dst
    if root.exists() and not all(is_own_file(p.name) for p in root.iterdir()):  # (a killed manifest write is ours)
        raise FileExistsError(f"{root} exists, is not empty and holds no cache manifest: choose another --out.")
    root.mkdir(parents=True, exist_ok=True)
    converted_from = {
        "location": src.location if src.remote is not None else str(src.root.resolve()),
        "dtype": src.settings.dtype,
        "settings_fingerprint": src.settings.fingerprint(),
        "documents": len(src),
    }
    write_manifest(manifest, new_manifest(settings, key_fingerprint=src.fingerprint, converted_from=converted_from))
    dst = Cache(root, read_manifest(root))
    dst.ensure_settings_copy()
    return dst
