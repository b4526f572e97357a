"""The cache directory: open it, look documents up, read padded batches, verify it."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import resource
import secrets
import threading
import zlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from ..errors import CacheCorruptedError, CacheError, CacheLockedError, CacheMissError
from ..tokenization import Encoded, is_empty
from .codecs import codec_for
from .format import FLAG_TRUNCATED, HEADER_SIZE, READABLE_VERSIONS, RECORD_DTYPE, TOKEN_FIELDS, make_header
from .location import Remote, is_remote, local_path
from .settings import (
    MANIFEST_NAME,
    CacheSettings,
    atomic_write_json,
    has_shards,
    is_own_file,
    key_fingerprint,
    missing_manifest_error,
    new_manifest,
    provenance,
    read_copied_provenance,
    read_manifest,
    read_settings_copy,
    settings_copy_path,
    write_manifest,
    write_settings_copy,
)
from .shard import (
    SHARD_DIR,
    Entry,
    ShardWriter,
    header_problem,
    list_shards,
    repair_hint,
    replace_index,
    scan_index,
    shard_paths,
    split_index,
    trusted_records,
)

Document = str | Sequence[str]
"""A document: a text, or a list of words (pre-tokenized input such as CoNLL)."""


def _open_shards() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(8, min(256, (soft if soft > 0 else 1024) // 8))


OPEN_SHARDS = _open_shards()
"""Shards a reader keeps memory-mapped at once (each holds two file handles): at most 256, and an eighth of the
process's file-handle limit, so that a cache of thousands of shards does not run out of them."""


class _ShardRetired(Exception):
    """Shard ``args[0]`` (an id) lost its index after this reader opened the cache: a merge retired it."""


__all__ = [
    "Cache",
    "CachedBatch",
    "CachedDocument",
    "Document",
    "VerifyReport",
    "document_key",
    "open_cache",
    "restore_manifest",
]

log = logging.getLogger(__name__)


def document_key(settings_fingerprint: str, doc: Document) -> bytes:
    """Content key of a document under given cache settings (32 bytes, sha256)."""
    h = hashlib.sha256(b"embrecycle/doc/v1\0")
    h.update(settings_fingerprint.encode())
    if isinstance(doc, str):
        h.update(b"\0text\0" + doc.encode("utf-8", "surrogatepass"))
    else:
        h.update(b"\0words\0" + json.dumps(list(doc), ensure_ascii=False).encode("utf-8", "surrogatepass"))
    return h.digest()


@dataclass
class CachedDocument:
    """One document's stored states.

    Attributes:
        hidden: ``(n_tokens, hidden_size)`` float32 states of layer k.
        input_ids: ``(n_tokens,)`` token ids.
        word_ids: ``(n_tokens,)`` word index of each token (-1 for special tokens).
        offsets: ``(n_tokens, 2)`` character span of each token in its text (or word).
        truncated: Whether the document was cut to ``max_length``.
    """

    hidden: np.ndarray
    input_ids: np.ndarray
    word_ids: np.ndarray
    offsets: np.ndarray
    truncated: bool


@dataclass
class CachedBatch:
    """Documents re-padded on the right into one batch.

    Attributes:
        hidden: ``(batch, seq, hidden)`` states (zeros at padding).
        attention_mask: ``(batch, seq)`` 1 for real tokens.
        input_ids: ``(batch, seq)`` token ids (0 at padding).
        word_ids: ``(batch, seq)`` word index per token, -1 for special tokens and padding.
        indices: ``(batch,)`` entry indices in the cache.
    """

    hidden: torch.Tensor
    attention_mask: torch.Tensor
    input_ids: torch.Tensor
    word_ids: torch.Tensor
    indices: np.ndarray


@dataclass
class VerifyReport:
    """Outcome of :meth:`Cache.verify`."""

    documents_checked: int = 0
    problems: list[str] = field(default_factory=list)
    repaired_entries: int = 0
    busy_shards: list[str] = field(default_factory=list)
    """Shards a repair left alone because another process was writing them."""

    @property
    def ok(self) -> bool:
        return not self.problems


class Cache:
    """A cache directory opened for reading (and, through :meth:`writer`, appending).

    Use :func:`open_cache` or :meth:`Cache.create`; do not call the constructor.

    Args:
        root: Cache directory (for a cache at a URL: its local mirror).
        manifest: Its parsed manifest.
        verify_reads: Check each document's checksum when it is read.
        remote: The URL side of a cache at a URL (see :mod:`embrecycle.cache.location`).
    """

    def __init__(
        self, root: Path, manifest: dict[str, Any], verify_reads: bool = True, remote: Remote | None = None
    ) -> None:
        self.root = root
        self.remote = remote
        self.manifest = manifest
        self.settings = CacheSettings.from_dict(manifest["settings"])
        self.verify_reads = verify_reads
        self._reported: list[str] = []
        self.fingerprint = key_fingerprint(manifest, self.settings)  # what document keys are made under
        self.codec = codec_for(self.settings.dtype)
        self._width = self.codec.width(self.settings.hidden_size)
        self._row_bytes = self.codec.row_bytes(self.settings.hidden_size)
        self._lock = threading.RLock()  # a relocation (see _relocate) moves entries: reads see it whole
        self.refresh()

    # ---- construction ---------------------------------------------------
    @property
    def location(self) -> str:
        """Where the cache lives: its URL, or its directory."""
        return self.remote.url if self.remote else str(self.root)

    @classmethod
    def open(cls, path: str | os.PathLike[str], expected: CacheSettings | None = None, **kw: Any) -> Cache:
        """Open an existing cache (a directory or a URL); with ``expected``, fail unless its settings match."""
        if is_remote(path):
            remote = Remote(os.fspath(path))
            if not remote.exists(MANIFEST_NAME):
                raise FileNotFoundError(f"no cache at {os.fspath(path)} (it holds no {MANIFEST_NAME}).")
            remote.pull_meta()
            cache = cls(remote.mirror, read_manifest(remote.mirror), remote=remote, **kw)
        else:
            root = local_path(path)
            cache = cls(root, read_manifest(root), **kw)
        if expected is not None:
            cache.settings.check_matches(expected, cache.location)
        return cache

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        settings: CacheSettings,
        documents: Sequence[Document] = (),
        **kw: Any,
    ) -> Cache:
        """Open the cache at ``path`` (a directory or a URL) with ``settings``, creating it if absent.

        A local cache whose manifest was lost gets it back when its settings are proven: by the copy beside
        its shards, or by finding one of ``documents`` (keyed under ``settings``) in its shards.
        """
        if is_remote(path):
            remote = Remote(os.fspath(path))
            if remote.exists(MANIFEST_NAME):
                return cls.open(path, expected=settings, **kw)
            if remote.fs.exists(remote.path) and remote.fs.ls(remote.path):
                raise FileExistsError(
                    f"{remote.url} exists, is not empty and holds no cache manifest: choose another --out."
                )
            write_manifest(remote.mirror / MANIFEST_NAME, new_manifest(settings))
            remote.push(MANIFEST_NAME)
            return cls(remote.mirror, read_manifest(remote.mirror), remote=remote, **kw)
        root = local_path(path)
        if (root / MANIFEST_NAME).exists():
            return cls.open(root, expected=settings, **kw)
        if has_shards(root):
            return cls._recover(root, settings, documents, **kw)
        if root.exists() and not all(is_own_file(p.name) for p in root.iterdir()):
            raise FileExistsError(f"{root} exists, is not empty and holds no cache manifest: choose another --out.")
        write_manifest(root / MANIFEST_NAME, new_manifest(settings))
        cache = cls(root, read_manifest(root), **kw)
        cache.ensure_settings_copy()
        return cache

    @classmethod
    def _recover(cls, root: Path, settings: CacheSettings, documents: Sequence[Document], **kw: Any) -> Cache:
        """Restore the lost manifest of the shards at ``root``, if they are proven to hold ``settings``' states."""
        copy = read_settings_copy(root)
        if copy is not None:
            copy.check_matches(settings, str(root))
        elif not _documents_in_shards(root, settings, documents):
            raise missing_manifest_error(root)
        write_manifest(root / MANIFEST_NAME, new_manifest(settings, **read_copied_provenance(root)))
        log.warning("%s: restored the lost %s (its shards hold these settings' states)", root, MANIFEST_NAME)
        cache = cls(root, read_manifest(root), **kw)
        cache.ensure_settings_copy()
        cache.update_manifest_stats()
        return cache

    def ensure_settings_copy(self) -> None:
        """Write the copy of the settings beside the shards if it is missing or damaged (local caches)."""
        if self.remote is None and (
            read_settings_copy(self.root) != self.settings
            or read_copied_provenance(self.root) != provenance(self.manifest)
        ):
            write_settings_copy(self.root, self.settings, provenance(self.manifest))

    # ---- index ------------------------------------------------------------
    def refresh(self) -> None:
        """Re-read every shard index (picks up documents appended since opening).

        What cannot be trusted is left out and described in :attr:`damage`: a shard whose index header is bad,
        index records that fail their checksum, data files shorter than their records need, and records the
        manifest counted that are gone.
        """
        with self._lock:
            self._refresh()

    def _refresh(self) -> None:
        self._manifest_mtime = self._manifest_stamp()
        before = self._disk_manifest()  # read before listing: it counts nothing the listing cannot see
        self.shards = list_shards(self.root)
        self.damage: list[str] = []
        self.lost: list[str] = []  # the part of ``damage`` about records the manifest counted that are gone
        self.shard_records: dict[str, int] = {}
        self._present: dict[str, int] = {}
        self._index_ids: list[IndexId | None] = []  # each shard's index file as listed (a name reused differs)
        self._retired: set[int] = set()  # shards a merge retired after this reader listed them (see _relocate)
        self._gone: set[int] = set()  # entries removed from the cache after this reader listed them
        parts = [self._load_shard(sid, name) for sid, name in enumerate(self.shards)]
        self._check_recorded_counts(before)

        def cat(i: int, dt: npt.DTypeLike) -> np.ndarray:
            xs = [p[i] for p in parts]
            return np.concatenate(xs) if xs else np.empty(0, dt)

        all_keys = cat(0, "V32")
        # First occurrence wins: a document written twice (two writers) is stored once logically.
        self._lookup: dict[bytes, int] = {}
        order: list[int] = []
        for i, k in enumerate(all_keys.tolist()):
            if k not in self._lookup:
                self._lookup[k] = len(order)
                order.append(i)
        sel = np.asarray(order, dtype=np.int64)
        self.keys = all_keys[sel]
        self.shard_ids = cat(1, np.int32)[sel]
        self.rows = cat(2, np.int64)[sel]
        self.lengths = cat(3, np.int64)[sel]
        self._hidden_crc = cat(4, np.uint32)[sel]
        self._tokens_crc = cat(5, np.uint32)[sel]
        self._flags = cat(6, np.uint32)[sel]
        self._maps: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        if self.damage and self.damage != self._reported:
            more = f" (and {len(self.damage) - 1} more problem(s))" if len(self.damage) > 1 else ""
            log.warning("cache %s is damaged: %s%s", self.location, self.damage[0], more)
        self._reported = list(self.damage)

    def _load_shard(self, sid: int, name: str) -> tuple[np.ndarray, ...]:
        """The trusted records of shard ``name`` as columns (key, shard id, row, n_tokens, crcs, flags)."""
        s = self.settings
        path = shard_paths(self.root, name)["index"]
        hint = f"run {repair_hint(path)}, then re-run `cache build` to recompute what it drops"
        gone = False
        self._index_ids.append(_index_id(path) if self.remote is None else None)
        try:
            records, ok, _ = scan_index(path, s.hidden_size, s.dtype)
        except FileNotFoundError:  # retired by a merge since it was listed (a loss is told by the manifest's count)
            records, ok, gone = np.empty(0, RECORD_DTYPE), np.empty(0, bool), True
        except CacheCorruptedError as e:
            self.damage.append(str(e))
            records, ok = np.empty(0, RECORD_DTYPE), np.empty(0, bool)
        except OSError as e:
            self.damage.append(f"cannot read {path}: {e}; {hint}")
            records, ok = np.empty(0, RECORD_DTYPE), np.empty(0, bool)
        rec, bad = trusted_records(records, ok)
        for j in bad:
            self.damage.append(f"{path}: index record {j} of {len(records)} fails its checksum; {hint}")
        if not gone:
            self.shard_records[name] = len(rec)
            self._present[name] = len(rec) + len(bad)  # what the manifest's count is checked against
        self._check_data_sizes(name, rec, hint)
        return (
            rec["key"],
            np.full(len(rec), sid, np.int32),
            rec["row"].astype(np.int64),
            rec["n_tokens"].astype(np.int64),
            rec["hidden_crc"],
            rec["tokens_crc"],
            rec["flags"],
        )

    def _check_data_sizes(self, name: str, rec: np.ndarray, hint: str) -> None:
        """Note a data file shorter than its records need (only for files present here)."""
        if not len(rec):
            return
        rows = int((rec["row"] + rec["n_tokens"]).max())
        paths = shard_paths(self.root, name)
        for kind, width in (("hidden", self._row_bytes), ("tokens", TOKEN_FIELDS * 4)):
            p = paths[kind]
            if self.remote is not None and not p.exists():
                continue  # not downloaded yet
            size = p.stat().st_size if p.exists() else 0
            if size < rows * width:
                need = rows * width
                state = f"is truncated ({size} bytes, its index needs {need})" if p.exists() else "is missing"
                self.damage.append(f"{p} {state}; {hint}")

    def _disk_manifest(self) -> dict[str, Any]:
        """The manifest as it is on disk now (this reader's copy for a cache at a URL, or one unreadable now)."""
        if self.remote is not None:
            return self.manifest
        try:
            return read_manifest(self.root)
        except (OSError, CacheError, ValueError):
            return self.manifest

    def _check_recorded_counts(self, before: dict[str, Any]) -> None:
        """Note shards that hold fewer records than the manifest counted (an index truncated or deleted).

        ``before`` is the manifest read before the shards were listed, so it counts no record the listing
        missed (a writer appending meanwhile counts more only later). A second read after the scan names the
        shards a merge retired meanwhile: a loss is a shard both copies count more records of than it holds.
        """
        if self.remote is not None:
            return
        manifest = self.root / MANIFEST_NAME
        recorded = before.get("stats", {}).get("shard_records")
        if not isinstance(recorded, dict):
            return
        after = self._disk_manifest()
        still = after.get("stats", {}).get("shard_records")
        still = still if isinstance(still, dict) else recorded
        retired: set[str] = set()
        for m in (before, after):
            marker = m.get("compaction")
            retired |= set(marker.get("replaced", [])) if isinstance(marker, dict) else set()
        for name, n in sorted(recorded.items()):
            have = self._present.get(name)
            n_after = still.get(name)
            if (
                not isinstance(n, int)
                or (have is not None and have >= n)
                or (have is None and name in retired)
                or not isinstance(n_after, int)
                or (have is not None and have >= n_after)
            ):
                continue  # (a shard a finished merge replaced may be gone: see embrecycle.cache.maintenance)
            index = shard_paths(self.root, name)["index"]
            state = "is missing" if have is None else f"holds {have} records"
            self.lost.append(
                f"{index} {state} but {manifest} counted {n}: documents were lost (index truncated or deleted); "
                f"run {repair_hint(index)} to accept the loss, then re-run `cache build` to recompute them"
            )
        self.damage.extend(self.lost)

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def live_shards(self) -> list[str]:
        """The shards this reader reads from (without those a merge retired since it listed them)."""
        return [name for sid, name in enumerate(self.shards) if sid not in self._retired]

    def key(self, doc: Document) -> bytes:
        """The content key of ``doc`` in this cache."""
        return document_key(self.fingerprint, doc)

    def __contains__(self, doc: object) -> bool:
        return isinstance(doc, str | list | tuple) and self.key(doc) in self._lookup

    def index_of(self, key: bytes) -> int | None:
        """Entry index of a key, or None."""
        return self._lookup.get(key)

    # ---- reads --------------------------------------------------------------
    def _maps_for(self, sid: int) -> tuple[np.ndarray, np.ndarray]:
        """Shard ``sid``'s memory maps; at most :data:`OPEN_SHARDS` shards stay mapped (each holds two files)."""
        if sid in self._maps:
            self._maps.move_to_end(sid)
        else:
            while len(self._maps) >= OPEN_SHARDS:
                self._maps.popitem(last=False)  # unmapped once no array read from it is alive
            if self.remote is not None:
                self.remote.pull_shard_data(self.shards[sid])
            paths = shard_paths(self.root, self.shards[sid])
            maps = (
                _memmap(paths["hidden"], self.codec.item_dtype, self._width),
                _memmap(paths["tokens"], np.dtype("<i4"), TOKEN_FIELDS),
            )
            # checked after mapping: a merge deletes a retired shard's index before its data, so an index still
            # there now (the same file as listed) means the data was there when mapped
            if self._is_retired(sid):
                raise _ShardRetired(sid)
            self._maps[sid] = maps
        return self._maps[sid]

    def _entry_maps(self, i: int) -> tuple[np.ndarray, np.ndarray, int, int]:
        """Entry ``i``'s shard's memory maps, first row and rows. An entry whose shard a merge retired since this
        reader listed it is first pointed at its new place (:meth:`_relocate`)."""
        with self._lock:
            self._follow_merges()
            for _ in range(4):  # a merge of merges can retire the new place too
                if i in self._gone:
                    break
                try:
                    hidden_mm, tokens_mm = self._maps_for(int(self.shard_ids[i]))
                    return hidden_mm, tokens_mm, int(self.rows[i]), int(self.lengths[i])
                except _ShardRetired:
                    if not self._relocate():
                        break
        raise CacheMissError(
            f"document {self.keys[i].tobytes().hex()[:16]} is no longer in {self.location}: it was removed (`cache "
            "remove`) or its shard lost after this reader opened the cache. Open the cache again."
        )

    def _manifest_stamp(self) -> int | None:
        """When the manifest was last written (every build, merge and removal rewrites it); None for a URL."""
        if self.remote is not None:
            return None
        try:
            return os.stat(self.root / MANIFEST_NAME).st_mtime_ns
        except FileNotFoundError:
            return None

    def _follow_merges(self) -> None:
        """After the manifest changed, check the shards this reader has mapped: one a merge retired (its file
        lives on while mapped) holds documents a removal dropped and disk space it meant to free, so its
        entries move to their new place (:meth:`_relocate`). One ``stat`` per read otherwise."""
        stamp = self._manifest_stamp()
        if stamp is None or stamp == self._manifest_mtime:
            return
        self._manifest_mtime = stamp
        if any(self._is_retired(sid) for sid in self._maps):
            self._relocate()

    def _is_retired(self, sid: int) -> bool:
        """Whether shard ``sid``'s index is no longer the file this reader listed (a merge deleted it, or a new
        shard took its name); a cache at a URL is never merged under its readers."""
        if self.remote is not None:
            return False
        return not _same_index(_index_id(shard_paths(self.root, self.shards[sid])["index"]), self._index_ids[sid])

    def _relocate(self) -> bool:
        """Point the entries of shards a merge retired (``cache compact`` / ``cache remove``) at the shard that
        holds them now; entries no longer in the cache become misses. Entry indices and keys stay (a merge copies
        stored bytes), so a long-lived reader (a server, a training run) goes on reading while the cache is
        compacted. Returns whether any entry moved or left."""
        now = Cache(self.root, read_manifest(self.root), verify_reads=self.verify_reads)
        self._retired |= {sid for sid in range(len(self.shards)) if sid not in self._retired and self._is_retired(sid)}
        sid_of = {name: sid for sid, name in enumerate(self.shards) if sid not in self._retired}
        moving = np.flatnonzero(np.isin(self.shard_ids, sorted(self._retired)))
        changed = False
        for i in moving.tolist():
            if i in self._gone:
                continue
            key = self.keys[i].tobytes()
            j = now.index_of(key)
            changed = True
            if j is None:
                self._gone.add(i)
                self._lookup.pop(key, None)  # a miss from now on
                continue
            name = now.shards[int(now.shard_ids[j])]
            if name not in sid_of:
                sid_of[name] = len(self.shards)
                self.shards.append(name)
                self._index_ids.append(now._index_ids[int(now.shard_ids[j])])
            self.shard_ids[i], self.rows[i], self.lengths[i] = sid_of[name], now.rows[j], now.lengths[j]
            self._hidden_crc[i], self._tokens_crc[i] = now._hidden_crc[j], now._tokens_crc[j]
            self._flags[i] = now._flags[j]
        for sid in self._retired:
            self._maps.pop(sid, None)
        return changed

    def _rows(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Raw stored rows of entry ``i``: ``(hidden in storage dtype, tokens int32)``, checked."""
        hidden_mm, tokens_mm, row, n = self._entry_maps(i)
        h, t = hidden_mm[row : row + n], tokens_mm[row : row + n]
        if h.shape[0] != n or t.shape[0] != n:
            raise CacheCorruptedError(f"{self._where(i)}: the shard's data file is truncated. " + self._fix())
        if self.verify_reads and (
            zlib.crc32(h.data) != int(self._hidden_crc[i]) or zlib.crc32(t.data) != int(self._tokens_crc[i])
        ):
            raise CacheCorruptedError(
                f"{self._where(i)}: checksum mismatch, the stored states are corrupted. " + self._fix()
            )
        return h, t

    def stored_entry(self, i: int) -> Entry:
        """Entry ``i`` exactly as stored (checksummed), ready to append to another shard."""
        hidden, tokens = self._rows(i)
        truncated = bool(int(self._flags[i]) & FLAG_TRUNCATED)
        return Entry(self.keys[i].tobytes(), np.array(hidden), np.array(tokens), truncated)

    def require_undamaged(self, command: str) -> None:
        """Refuse ``command`` (one that rewrites what it reads) on a damaged cache: it would lose records a repair
        keeps."""
        if self.damage:
            raise CacheCorruptedError(
                f"cache {self.location} is damaged ({len(self.damage)} problem(s); first: {self.damage[0]}): run "
                f"`embrecycle cache verify --repair {self.location}` (it keeps every record whose data checks out), "
                f"then `cache {command}` again."
            )

    def encoded(self, i: int) -> Encoded:
        """Entry ``i``'s tokenization (ids, word ids, offsets, truncation), as the build computed it."""
        return Encoded.from_table(*self.token_table(i))

    def token_table(self, i: int) -> tuple[np.ndarray, bool]:
        """Entry ``i``'s ``(n_tokens, 4)`` token table (id, word id, char start, char end) and truncation flag,
        read without its states (checked against the tokens' checksum)."""
        _, tokens_mm, row, n = self._entry_maps(i)
        t = tokens_mm[row : row + n]
        if t.shape[0] != n:
            raise CacheCorruptedError(f"{self._where(i)}: the shard's token file is truncated. " + self._fix())
        if self.verify_reads and zlib.crc32(t.data) != int(self._tokens_crc[i]):
            raise CacheCorruptedError(
                f"{self._where(i)}: checksum mismatch, the stored tokens are corrupted. " + self._fix()
            )
        return np.array(t), bool(int(self._flags[i]) & FLAG_TRUNCATED)

    def _where(self, i: int) -> str:
        shard = self.shards[int(self.shard_ids[i])]
        return (
            f"document {self.keys[i].tobytes().hex()[:16]} in shard {shard!r} "
            f"({shard_paths(self.root, shard)['hidden'].with_suffix('.*')}) of {self.location}"
        )

    def _fix(self) -> str:
        return f"Run `embrecycle cache verify --repair {self.location}`, then re-run `cache build` to recompute it."

    def read(self, i: int) -> CachedDocument:
        """Entry ``i`` as float32 arrays."""
        h, t = self._rows(i)
        return CachedDocument(
            hidden=self.codec.decode(np.array(h), self.settings.hidden_size).float().numpy(),
            input_ids=np.array(t[:, 0]),
            word_ids=np.array(t[:, 1]),
            offsets=np.array(t[:, 2:4]),
            truncated=bool(int(self._flags[i]) & FLAG_TRUNCATED),
        )

    def get(self, doc: Document) -> CachedDocument:
        """The stored states of ``doc``.

        Raises:
            CacheMissError: the document is not in the cache.
        """
        i = self._lookup.get(self.key(doc))
        if i is None:
            shown = doc if isinstance(doc, str) else " ".join(doc)
            if self.damage:  # the document may be among what cannot be trusted: say so, not "missing"
                raise CacheCorruptedError(
                    f"document {shown[:80]!r} is not among the trusted entries of cache {self.location}, which is "
                    f"damaged ({len(self.damage)} problem(s); first: {self.damage[0]})"
                )
            raise CacheMissError(f"document not in cache {self.location}: {shown[:80]!r}")
        return self.read(i)

    def read_batch(self, indices: Sequence[int] | np.ndarray, dtype: torch.dtype = torch.float32) -> CachedBatch:
        """Entries ``indices`` re-padded on the right into one batch."""
        idx = np.asarray(indices, dtype=np.int64)
        lens = self.lengths[idx]
        b, lmax, hs = len(idx), int(lens.max()) if len(idx) else 0, self.settings.hidden_size
        hidden = np.zeros((b, lmax, self._width), self.codec.item_dtype)
        toks = np.zeros((b, lmax, TOKEN_FIELDS), np.int32)
        toks[:, :, 1] = -1
        for j, i in enumerate(idx):
            h, t = self._rows(int(i))
            hidden[j, : len(h)] = h
            toks[j, : len(t)] = t
        mask = torch.from_numpy(np.arange(lmax)[None, :] < lens[:, None]).long()
        return CachedBatch(
            hidden=self.codec.decode(hidden, hs).to(dtype),
            attention_mask=mask,
            input_ids=torch.from_numpy(toks[:, :, 0]).long(),
            word_ids=torch.from_numpy(toks[:, :, 1]).long(),
            indices=idx,
        )

    # ---- writing ------------------------------------------------------------
    def writer(self, name: str | None = None, fsync: bool = True) -> ShardWriter:
        """A writer on shard ``name``, or on the first local shard no other process holds."""
        s = self.settings
        if name is not None:
            return ShardWriter(self.root, name, s.hidden_size, s.dtype, fsync=fsync)
        # Writers on several machines share a cache at a URL: each mirror names its shards apart.
        prefix = f"local-{self._writer_id()}-" if self.remote else "local-"
        marker = self.manifest.get("compaction")
        retiring = set(marker.get("replaced", [])) if isinstance(marker, dict) else set()
        for n in range(10_000):
            if f"{prefix}{n:05d}" in retiring:
                continue  # an interrupted merge still deletes a shard of that name
            try:
                return ShardWriter(self.root, f"{prefix}{n:05d}", s.hidden_size, s.dtype, fsync=fsync)
            except CacheLockedError:
                continue
        raise CacheLockedError(f"no free shard name in {self.root}")

    def _writer_id(self) -> str:
        """A random name for this mirror's writers, made once and kept in the mirror."""
        path = self.root / ".writer-id"
        if not path.exists():
            atomic_write_json(path, {"id": secrets.token_hex(4)})
        return str(json.loads(path.read_text(encoding="utf-8"))["id"])

    def sync(self) -> list[str]:
        """Upload this machine's new shards of a cache at a URL, then its manifest; the shards uploaded."""
        if self.remote is None:
            return []
        pushed = self.remote.push_pending()
        self.update_manifest_stats()
        return pushed

    def _file_size(self, p: Path) -> int:
        if p.exists():
            return p.stat().st_size
        if self.remote is not None:  # a shard of a cache at a URL whose data has not been read yet
            return self.remote.size(p.relative_to(self.root).as_posix())
        return 0

    def stats(self) -> dict[str, Any]:
        """Documents, tokens and bytes on disk (all shard files)."""
        size = 0
        for name in self.live_shards:
            for kind in ("hidden", "tokens", "index"):
                size += self._file_size(shard_paths(self.root, name)[kind])
        tokens = int(self.lengths.sum())
        return {
            "documents": len(self),
            "tokens": tokens,
            "bytes": size,
            "bytes_per_token": round(size / tokens, 1) if tokens else 0.0,
            "truncated_documents": int((self._flags & FLAG_TRUNCATED != 0).sum()),
            "shards": len(self.live_shards),
        }

    def update_manifest_stats(self) -> None:
        """Refresh and write the manifest's ``stats`` (under a lock: several writers may finish at once).

        ``stats.shard_records`` counts each shard's records, so that a reader notices records that were lost.
        """
        with open(self.root / ".manifest.lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self.refresh()
            manifest = read_manifest(self.root)
            now = datetime.now(UTC).isoformat(timespec="seconds")
            manifest["stats"] = {**self.stats(), "shard_records": dict(self.shard_records), "updated": now}
            write_manifest(self.root / MANIFEST_NAME, manifest)
            self.manifest = manifest
            if self.remote is not None:
                self.remote.push(MANIFEST_NAME)

    # ---- integrity ----------------------------------------------------------
    def verify(self, repair: bool = False) -> VerifyReport:
        """Check every record's checksum, every file's length and every document's data.

        With ``repair``, damaged entries are dropped from their shard's index (a damaged header is rebuilt
        from the manifest, keeping every record whose data checks out) and the manifest's statistics are
        rewritten, so that the next ``cache build`` recomputes exactly the dropped documents.
        """
        report = VerifyReport()
        self.refresh()
        lost = list(self.lost)
        for name in list_shards(self.root):
            self._verify_shard(name, repair, report)
        report.problems.extend(lost)
        copy_problem = self._settings_copy_problem()
        if copy_problem:
            report.problems.append(copy_problem)
        if repair:
            if copy_problem:
                self.ensure_settings_copy()
            if self.remote is None and not report.ok and not report.busy_shards:
                self.update_manifest_stats()  # accept what was dropped or lost
            self.refresh()
        return report

    def _settings_copy_problem(self) -> str | None:
        """What is wrong with the settings copy beside the shards (None: it matches the manifest, or none is kept:
        a cache at a URL, or one without shards yet)."""
        if self.remote is not None or not has_shards(self.root) or read_settings_copy(self.root) == self.settings:
            return None
        path = settings_copy_path(self.root)
        what = "is missing" if not path.exists() else "is damaged or differs from the manifest's settings"
        return f"{path} {what} (it restores a lost manifest): `embrecycle cache verify --repair` rewrites it"

    def _verify_shard(self, name: str, repair: bool, report: VerifyReport) -> None:
        s, paths = self.settings, shard_paths(self.root, name)
        index = paths["index"]
        if self.remote is not None:
            self.remote.pull_shard_data(name)
        try:
            raw = index.read_bytes()
        except OSError as e:
            report.problems.append(f"cannot read {index}: {e}")
            return
        bad_header = header_problem(raw, s.hidden_size, s.dtype)
        if bad_header:
            report.problems.append(f"{index}: {bad_header}")
        records, ok, torn = split_index(raw)
        if torn:
            report.problems.append(f"{index}: ends with {torn} bytes of an unfinished write")
        good = self._check_records(name, records, ok, report)
        damaged = bool(bad_header or torn or not good.all())
        if repair and damaged and self._rewrite_index(name, records[good], report):
            report.repaired_entries += int((~good).sum())

    def _check_records(self, name: str, records: np.ndarray, ok: np.ndarray, report: VerifyReport) -> np.ndarray:
        """Which records are sound: checksummed, pointing at complete data that matches its checksums."""
        paths = shard_paths(self.root, name)
        hidden_mm = _memmap(paths["hidden"], self.codec.item_dtype, self._width)
        tokens_mm = _memmap(paths["tokens"], np.dtype("<i4"), TOKEN_FIELDS)
        good, data = ok.copy(), paths["hidden"].with_suffix(".hidden|.tokens")
        for j, rec in enumerate(records):
            report.documents_checked += 1
            key = rec["key"].tobytes().hex()[:16]
            if not ok[j]:
                report.problems.append(f"shard {name!r} ({paths['index']}): index record {j} fails its checksum")
                continue
            row, n = int(rec["row"]), int(rec["n_tokens"])
            h, t = hidden_mm[row : row + n], tokens_mm[row : row + n]
            if len(h) != n or len(t) != n:
                report.problems.append(f"shard {name!r}: document {key} is cut off ({data} truncated)")
                good[j] = False
            elif zlib.crc32(h.data) != int(rec["hidden_crc"]) or zlib.crc32(t.data) != int(rec["tokens_crc"]):
                report.problems.append(f"shard {name!r}: document {key} fails its data checksum ({data})")
                good[j] = False
        return good

    def _rewrite_index(self, name: str, keep: np.ndarray, report: VerifyReport) -> bool:
        """Replace shard ``name``'s index by a fresh header and ``keep``, under the shard's write lock."""
        s, paths = self.settings, shard_paths(self.root, name)
        with open(paths["lock"], "a+b") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                report.busy_shards.append(name)
                report.problems.append(
                    f"shard {name!r} is being written by another process: re-run "
                    f"`embrecycle cache verify --repair {self.location}` when that build has finished"
                )
                return False
            replace_index(paths["index"], make_header(s.hidden_size, s.dtype) + keep.tobytes())
        if self.remote is not None:
            self.remote.push(f"{SHARD_DIR}/{name}.index")
        return True


def restore_manifest(path: str | os.PathLike[str]) -> str | None:
    """Restore the lost or damaged manifest of the local cache at ``path`` from the settings copy beside its
    shards (a damaged one is kept as ``manifest.json.damaged``); its statistics are recounted from the shards.

    Returns what was done (None: nothing to restore, or no copy to restore it from).
    """
    if is_remote(path):
        return None
    root = local_path(path)
    manifest, copy = root / MANIFEST_NAME, read_settings_copy(root)
    if copy is None or not has_shards(root):
        return None
    if manifest.exists():
        try:
            read_manifest(root)
            return None
        except CacheCorruptedError as e:
            if _other_format_version(manifest):
                return None  # another embrecycle's cache, not a damaged one
            what = f"{manifest} was damaged ({str(e).split('. ')[0]}; kept as {manifest.name}.damaged)"
            os.replace(manifest, manifest.with_name(f"{manifest.name}.damaged"))
    else:
        what = f"{manifest} was missing"
    write_manifest(manifest, new_manifest(copy, **read_copied_provenance(root)))
    Cache(root, read_manifest(root)).update_manifest_stats()
    return f"{what}: restored it from {settings_copy_path(root)}"


def _other_format_version(manifest: Path) -> bool:
    """Whether ``manifest`` is a readable manifest of another cache format version."""
    try:
        version = json.loads(manifest.read_text(encoding="utf-8")).get("format_version")
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(version, int) and version not in READABLE_VERSIONS


def _documents_in_shards(root: Path, settings: CacheSettings, documents: Sequence[Document]) -> bool:
    """Whether one of ``documents``, keyed under ``settings``, is in a shard at ``root`` (proves the settings)."""
    stored: set[bytes] = set()
    for name in list_shards(root):
        with contextlib.suppress(OSError):
            records, ok, _ = split_index(shard_paths(root, name)["index"].read_bytes())
            stored.update(records[ok]["key"].tolist())
    fingerprint = settings.fingerprint()
    return any(not is_empty(d) and document_key(fingerprint, d) in stored for d in documents)


IndexId = tuple[int, bytes]
"""What tells one shard index file from another written later under the same name: its inode and its first
record's key (appends change neither; a file system may reuse a freed inode, but not with the same first
document)."""


def _same_index(now: IndexId | None, listed: IndexId | None) -> bool:
    """Whether an index file is still the one listed (one listed before its first record: same inode)."""
    if now is None or listed is None:
        return now is listed
    return now[0] == listed[0] if not listed[1] else now == listed


def _index_id(path: Path) -> IndexId | None:
    """An index file's :data:`IndexId` (None: there is no such file)."""
    try:
        with open(path, "rb") as f:
            ino = os.fstat(f.fileno()).st_ino
            f.seek(HEADER_SIZE)
            return ino, f.read(32)
    except FileNotFoundError:
        return None


def _memmap(path: Path, dtype: np.dtype, width: int) -> np.ndarray:
    """The file's whole rows, memory-mapped (none when it is missing: the caller tells a loss from a merge)."""
    try:
        rows = path.stat().st_size // (dtype.itemsize * width)
        if rows == 0:
            return np.zeros((0, width), dtype)
        return np.memmap(path, dtype=dtype, mode="r", shape=(rows, width))
    except FileNotFoundError:
        return np.zeros((0, width), dtype)


def open_cache(path: str | os.PathLike[str], verify_reads: bool = True, expected: CacheSettings | None = None) -> Cache:
    """Open the cache directory at ``path`` for reading.

    Args:
        path: Cache directory, or a URL (``s3://...``, ``memory://...``; see :mod:`embrecycle.cache.location`).
        verify_reads: Check each document's crc32 when it is read.
        expected: Settings the cache must have (e.g. from ``cache_settings_for``); a mismatch
            raises :class:`CacheMismatchError` naming each differing setting.

    Example:
        >>> cache = open_cache("caches/sci-cite-minilm-L3")  # doctest: +SKIP
        >>> doc = cache.get("We use the method of ...")      # doctest: +SKIP
        >>> doc.hidden.shape                                  # doctest: +SKIP
        (14, 384)
    """
    return Cache.open(path, expected=expected, verify_reads=verify_reads)
