"""Reading and appending one shard (``.hidden`` + ``.tokens`` + ``.index``).

Crash safety comes from ordering: a batch's rows are written and flushed
before its index records, and a writer that opens a shard first cuts the data
files back to the end of the last valid record. So a kill at any moment loses
at most the batch being written, and a reader never sees a record whose data
is incomplete.
"""

from __future__ import annotations

import fcntl
import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO

import numpy as np

from ..errors import CacheCorruptedError, CacheLockedError, ConfigError
from .codecs import codec_for
from .format import (
    FLAG_TRUNCATED,
    HEADER_SIZE,
    READABLE_VERSIONS,
    RECORD_DTYPE,
    RECORD_SIZE,
    TOKEN_FIELDS,
    format_version,
    make_header,
    parse_header,
    seal_records,
    valid_records,
)

SHARD_DIR = "shards"
SHARD_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")
"""A shard name: a plain file-name token (its files are ``shards/<name>.index`` and so on)."""


def shard_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a shard (None: it can)."""
    if SHARD_NAME.fullmatch(name):
        return None
    return (
        f"shard={name!r} (use a plain name of letters, digits, '-', '_' and '.', not starting with '.', "
        "at most 128 characters and no path separators, e.g. --shard worker-1; check that the shell variable "
        "it comes from is set)"
    )


@dataclass
class Entry:
    """One document's states, ready to be written.

    Attributes:
        key: 32-byte document key.
        hidden: ``(n_tokens, width)`` stored items: the storage codec's encoding of the states.
        tokens: ``(n_tokens, 4)`` int32: input id, word id, char start, char end.
        truncated: Whether the document was cut to ``max_length``.
    """

    key: bytes
    hidden: np.ndarray
    tokens: np.ndarray
    truncated: bool = False


def shard_paths(root: Path, name: str) -> dict[str, Path]:
    base = root / SHARD_DIR / name
    return {ext: base.with_name(f"{name}.{ext}") for ext in ("hidden", "tokens", "index", "lock", "plan.npz")}


def list_shards(root: Path) -> list[str]:
    d = root / SHARD_DIR
    if not d.is_dir():
        return []
    return sorted(p.name[: -len(".index")] for p in d.glob("*.index"))


def repair_hint(path: Path) -> str:
    """The command that repairs the cache holding shard file ``path`` (``<cache>/shards/<file>``)."""
    return f"`embrecycle cache verify --repair {path.parent.parent}`"


def header_problem(raw: bytes, hidden_size: int, dtype: str) -> str | None:
    """Why an index header does not fit a cache of ``hidden_size`` / ``dtype`` (None: it fits)."""
    try:
        version, hs, dt = parse_header(raw[:HEADER_SIZE])
    except (ValueError, UnicodeDecodeError) as e:
        return f"bad index header ({e})"
    if version not in READABLE_VERSIONS:
        return f"index header says format version {version}, this embrecycle reads versions {READABLE_VERSIONS}"
    if (hs, dt) == (hidden_size, dtype) and version != format_version(dtype):
        return f"index header says format version {version}, but a {dtype} cache is version {format_version(dtype)}"
    if (hs, dt) != (hidden_size, dtype):
        return (
            f"shard holds hidden_size={hs}, dtype={dt!r} but the manifest says "
            f"hidden_size={hidden_size}, dtype={dtype!r} (another cache's shard, or a damaged header)"
        )
    return None


def split_index(raw: bytes) -> tuple[np.ndarray, np.ndarray, int]:
    """The records after the header of index bytes ``raw``, which pass their checksum, and the torn tail size."""
    body = raw[HEADER_SIZE:]
    n = len(body) // RECORD_SIZE
    records = np.frombuffer(body[: n * RECORD_SIZE], dtype=RECORD_DTYPE).copy()
    return records, valid_records(records), len(body) - n * RECORD_SIZE


def scan_index(path: Path, hidden_size: int, dtype: str) -> tuple[np.ndarray, np.ndarray, int]:
    """All records of an index file, which of them pass their checksum, and the torn tail size in bytes.

    Raises:
        CacheCorruptedError: the header is bad or belongs to another cache.
    """
    raw = path.read_bytes()
    problem = header_problem(raw, hidden_size, dtype)
    if problem:
        raise CacheCorruptedError(
            f"{path}: {problem}. Run {repair_hint(path)} (it rebuilds the header and keeps every record whose "
            "data checks out), then re-run `cache build`."
        )
    return split_index(raw)


def trusted_records(records: np.ndarray, ok: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """The records to use and the positions of damaged ones (a bad last record is a torn write, not damage)."""
    bad = [int(j) for j in np.flatnonzero(~ok[:-1])] if len(records) else []
    return records[ok], bad


def read_index(path: Path, hidden_size: int, dtype: str) -> tuple[np.ndarray, int]:
    """The valid records of an index file, and how many torn trailing bytes were ignored.

    Only the last record may fail its checksum (a write killed mid-record);
    a bad record before it means the file was damaged.

    Raises:
        CacheCorruptedError: bad header, or a bad record before the last one.
    """
    records, ok, torn = scan_index(path, hidden_size, dtype)
    n = len(records)
    _, bad = trusted_records(records, ok)
    if bad:
        raise CacheCorruptedError(
            f"{path}: index record {bad[0]} of {n} fails its checksum (the file was modified or damaged). "
            f"Run {repair_hint(path)} to drop the damaged entries, then re-run `cache build`."
        )
    if n and not ok[-1]:
        records, torn = records[:-1], torn + RECORD_SIZE
    return records, torn


def replace_index(path: Path, data: bytes) -> None:
    """Make ``data`` (a header and its records) the index at ``path``, all or nothing.

    Written beside it as ``<index>.tmp``, flushed to disk and renamed into place: a kill mid-write leaves
    the old index (or none) and a stray ``.tmp``, never a headerless or half-written index, which a reader
    (rightly) reports as damage. The shard's next index write overwrites the stray file; ``gc`` deletes it
    only with a shard whose index never landed.
    """
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class ShardWriter:
    """The single writer of one shard; holds an exclusive lock on it.

    Args:
        root: Cache directory.
        name: Shard name (file stem under ``shards/``).
        hidden_size: Width of a row.
        dtype: Storage dtype name.
        fsync: Flush to stable storage after each batch (survives power loss,
            not only a killed process).
    """

    def __init__(self, root: Path, name: str, hidden_size: int, dtype: str, fsync: bool = True) -> None:
        problem = shard_name_problem(name)
        if problem:
            raise ConfigError(f"invalid {problem}.")
        self.paths = shard_paths(root, name)
        self.name = name
        self.hidden_size = hidden_size
        self.dtype = dtype
        self.fsync = fsync
        self.codec = codec_for(dtype)
        self.width = self.codec.width(hidden_size)
        self.row_bytes = self.codec.row_bytes(hidden_size)
        self.paths["index"].parent.mkdir(parents=True, exist_ok=True)
        self._lock = self._take_lock(name)
        try:
            self._recover()
        except BaseException:
            self._lock.close()  # releases the lock
            raise
        self._hidden = open(self.paths["hidden"], "r+b")  # noqa: SIM115
        self._tokens = open(self.paths["tokens"], "r+b")  # noqa: SIM115
        self._index = open(self.paths["index"], "r+b")  # noqa: SIM115
        self._index.seek(0, os.SEEK_END)
        self.bytes_written = 0

    def _take_lock(self, name: str) -> BinaryIO:
        """The shard's lock file, locked. A lock file that was deleted (a merge retires shards) while this process
        opened it is not the shard's lock any more: open the one at its path again."""
        for _ in range(100):
            f = open(self.paths["lock"], "a+b")  # noqa: SIM115 - held for the writer's life
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.close()
                raise CacheLockedError(f"shard {name!r} is being written by another process") from None
            if still_at(f, self.paths["lock"]):
                return f
            f.close()
        raise CacheLockedError(f"shard {name!r}: its lock file keeps being replaced")

    def _recover(self) -> None:
        """Cut every file back to the last complete, checksummed record."""
        idx = self.paths["index"]
        if not idx.exists() or idx.stat().st_size < HEADER_SIZE:
            replace_index(idx, make_header(self.hidden_size, self.dtype))
            records = np.empty(0, RECORD_DTYPE)
        else:
            records, torn = read_index(idx, self.hidden_size, self.dtype)
            if torn:
                os.truncate(idx, HEADER_SIZE + len(records) * RECORD_SIZE)
        self.next_row = int((records["row"] + records["n_tokens"]).max()) if len(records) else 0
        for kind, width in (("hidden", self.row_bytes), ("tokens", TOKEN_FIELDS * 4)):
            p = self.paths[kind]
            if not p.exists():
                p.touch()
            size = p.stat().st_size
            if size < self.next_row * width:
                raise CacheCorruptedError(
                    f"{p} is truncated: {size} bytes, but its index needs {self.next_row * width}. "
                    f"Run {repair_hint(p)}, then re-run `cache build`."
                )
            if size > self.next_row * width:
                os.truncate(p, self.next_row * width)  # rows of a batch killed before its index write

    def append(self, entries: list[Entry]) -> int:
        """Append a batch of documents; returns the bytes written."""
        if not entries:
            return 0
        records = np.zeros(len(entries), RECORD_DTYPE)
        hidden_parts: list[np.ndarray] = []
        token_parts: list[np.ndarray] = []
        row = self.next_row
        for i, e in enumerate(entries):
            n = e.hidden.shape[0]
            h = np.ascontiguousarray(e.hidden, dtype=self.codec.item_dtype)
            t = np.ascontiguousarray(e.tokens, dtype="<i4")
            if h.shape != (n, self.width) or t.shape != (n, TOKEN_FIELDS):
                raise ValueError(f"entry {i}: hidden {h.shape} / tokens {t.shape} do not fit this shard")
            records[i]["key"] = np.void(e.key)
            records[i]["row"] = row
            records[i]["n_tokens"] = n
            records[i]["hidden_crc"] = zlib.crc32(h.data)  # .data: the array's own buffer, no copy
            records[i]["tokens_crc"] = zlib.crc32(t.data)
            records[i]["flags"] = FLAG_TRUNCATED if e.truncated else 0
            hidden_parts.append(h)
            token_parts.append(t)
            row += n
        seal_records(records)
        self._hidden.seek(self.next_row * self.row_bytes)
        self._tokens.seek(self.next_row * TOKEN_FIELDS * 4)
        for f, parts in ((self._hidden, hidden_parts), (self._tokens, token_parts)):
            for part in parts:
                f.write(part.data)
            f.flush()
            if self.fsync:
                os.fsync(f.fileno())
        # Only now do the records become visible.
        self._index.write(records.tobytes())
        self._index.flush()
        if self.fsync:
            os.fsync(self._index.fileno())
        written = sum(p.nbytes for p in hidden_parts) + sum(p.nbytes for p in token_parts) + records.nbytes
        self.next_row = row
        self.bytes_written += written
        return written

    def close(self) -> None:
        for f in (self._hidden, self._tokens, self._index):
            if not f.closed:
                f.close()
        if not self._lock.closed:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def still_at(f: IO[bytes], path: Path) -> bool:
    """Whether the open file ``f`` is still the file at ``path`` (not deleted or replaced since it was opened):
    a shard's lock file that a merge deleted, and a writer made anew, is not the lock another process holds."""
    try:
        return os.fstat(f.fileno()).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False
