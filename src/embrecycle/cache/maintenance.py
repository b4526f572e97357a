"""Keeping a large cache in shape: merge its shards, remove documents, collect garbage, describe it.

A cache written by many workers ends up with many small shards, and opening it reads every
shard's index. :func:`compact` merges shards into one; :func:`remove_documents` drops documents
(by content or key) and reclaims their space; :func:`collect_garbage` deletes files no index
refers to; :func:`cache_stats` says what each shard holds.

Crash safety: shards are append-only, so every change writes a new shard and only then retires
the old ones, in an order a kill cannot break:

1. the new shard is written like any build (records after their data), under its own lock, while
   the old shards stay as they are: a kill here leaves the old layout, plus a partial new shard
   whose documents are duplicates (a re-run merges it too);
2. the manifest is rewritten (atomically) to count the new shard and name the shards it replaces
   (``compaction``): from here on readers do not miss those shards when they are gone;
3. the replaced shards' index files are deleted (a document leaves its old shard only after it is
   safe in the new one), then their data files;
4. the manifest drops the ``compaction`` entry and recounts.

A kill in 3 or 4 leaves the new layout readable; the next :func:`compact`, :func:`remove_documents`
or :func:`collect_garbage` finishes the deletions first. Only local caches (a directory) are
maintained here; shards being written by another process are left alone.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import resource
import secrets
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from tqdm.auto import tqdm

from ..errors import ConfigError
from .location import is_remote
from .settings import MANIFEST_NAME, read_manifest, write_manifest
from .shard import SHARD_DIR, ShardWriter, list_shards, shard_paths, split_index, still_at
from .store import Cache, Document, open_cache

__all__ = [
    "CompactSummary",
    "cache_stats",
    "collect_garbage",
    "compact",
    "remove_documents",
]

BATCH_DOCUMENTS = 512
"""Documents appended per write of the new shard."""
GROUP_SHARDS = 1000
"""Shards merged at once (fewer when the process may open fewer files); the groups' shards are merged last."""
MARKER = "compaction"
"""The manifest entry naming the shards a finished merge replaced and is still deleting."""


@dataclass
class CompactSummary:
    """What one merge (or removal) did."""

    shards_before: int
    shards_after: int
    documents: int
    removed: int = 0
    duplicates_dropped: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    seconds: float = 0.0
    new_shard: str | None = None
    busy: list[str] = field(default_factory=list)
    requested: int = 0
    """(removal) Distinct documents asked to be removed."""
    not_found: int = 0
    """(removal) Of those, how many the cache did not hold."""
    remaining: int = 0
    """(removal) Of those, how many it still holds afterwards (their shards were being written: re-run later)."""

    def __str__(self) -> str:
        busy = f"; left alone (being written): {', '.join(self.busy)}" if self.busy else ""
        removed = f", removed {self.removed} documents" if self.removed else ""
        asked = ""
        if self.requested:
            asked = f"; of {self.requested} documents asked for, {self.not_found} were not in the cache"
            if self.remaining:
                asked += f" and {self.remaining} are STILL there (in shards being written: re-run when they finish)"
        return (
            f"{self.shards_before} shard(s) -> {self.shards_after} in {self.seconds:.1f} s: {self.documents} "
            f"documents{removed}, {self.duplicates_dropped} duplicate copies dropped, "
            f"{self.bytes_before / 1e6:.1f} MB -> {self.bytes_after / 1e6:.1f} MB{busy}{asked}"
        )


def _local(path: str | os.PathLike[str], what: str) -> Cache:
    if is_remote(path):
        raise ConfigError(
            f"{os.fspath(path)}: `cache {what}` works on a local cache directory (download the cache, {what} it, "
            "then upload it)."
        )
    return open_cache(path)


def compact(
    path: str | os.PathLike[str],
    shards: Sequence[str] | None = None,
    progress: bool = True,
    fsync: bool = True,
    _exclude: frozenset[bytes] = frozenset(),
) -> CompactSummary:
    """Merge the shards of the cache at ``path`` (default: all of them) into one.

    Shards another process is writing are left alone (and named in the summary). A document stored
    in several shards is kept once.
    """
    t0 = time.perf_counter()
    cache = _local(path, "compact")
    cache.require_undamaged("compact")  # first: finishing a merge recounts the manifest, which would hide a loss
    _finish_earlier(cache)
    before_shards, before_bytes = len(cache.shards), int(cache.stats()["bytes"])
    wanted = list(cache.shards) if shards is None else list(shards)
    unknown = sorted(set(wanted) - set(cache.shards))
    if unknown:
        raise ConfigError(f"shards {unknown} are not in {cache.location} (it has {cache.shards})")
    summary = CompactSummary(before_shards, before_shards, 0, bytes_before=before_bytes)
    group = _group_size()
    made = []
    for start in range(0, len(wanted), group):
        made += _merge(cache, wanted[start : start + group], _exclude, fsync, progress, summary)
    if len(made) > 1:  # the groups' shards, merged into one
        _merge(cache, made, frozenset(), fsync, progress, summary, count=False)
    cache.refresh()
    summary.new_shard = next((n for n in cache.shards if n.startswith("compact-")), None) if made else None
    summary.shards_after, summary.bytes_after = len(cache.shards), int(cache.stats()["bytes"])
    summary.seconds = time.perf_counter() - t0
    return summary


def _group_size() -> int:
    """Shards merged at once: each is held locked (one file handle) until it is retired."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(2, min(GROUP_SHARDS, (soft if soft > 0 else 1024) // 4))


def _merge(
    cache: Cache,
    names: Sequence[str],
    exclude: frozenset[bytes],
    fsync: bool,
    progress: bool,
    summary: CompactSummary,
    count: bool = True,
) -> list[str]:
    """Merge shards ``names`` (those no other process is writing) into one new shard; returns its name (or none)."""
    with _locked(cache.root, names) as (held, busy):
        summary.busy += busy
        cache.refresh()  # what was appended before the locks were taken
        sources = set(held)
        picked = [i for i in range(len(cache)) if cache.shards[int(cache.shard_ids[i])] in sources]
        keep = [i for i in picked if cache.keys[i].tobytes() not in exclude]
        stored = sum(cache.shard_records.get(name, 0) for name in sources)
        removed, duplicates = len(picked) - len(keep), stored - len(picked)
        if not sources or (len(sources) == 1 and removed == 0 and duplicates == 0):
            return []  # nothing to merge
        summary.removed += removed
        summary.duplicates_dropped += duplicates
        summary.documents += len(keep) if count else 0
        name = f"compact-{secrets.token_hex(4)}"
        if keep:
            _write_merged(cache, name, keep, fsync, progress)
        _retire(cache, sorted(sources), name if keep else None)
        return [name] if keep else []


def remove_documents(
    path: str | os.PathLike[str],
    docs: Iterable[Document] = (),
    keys: Iterable[bytes | str] = (),
    progress: bool = True,
    fsync: bool = True,
) -> CompactSummary:
    """Drop documents (given as text / word lists, or as keys: bytes or hex) and reclaim their space.

    The shards holding them are rewritten without them; documents that are not in the cache are
    ignored. The summary counts what was removed, what was not there (:attr:`CompactSummary.not_found`) and
    what is still there because another process is writing its shard (:attr:`CompactSummary.remaining`).
    """
    cache = _local(path, "remove")
    cache.require_undamaged("remove")  # first: finishing a merge recounts the manifest, which would hide a loss
    _finish_earlier(cache)  # an interrupted merge's retired shards are not holders to rewrite
    wanted = {cache.key(d) for d in docs} | {_key_bytes(k) for k in keys}
    not_found = sum(cache.index_of(k) is None for k in wanted)
    holders = _holders(cache.root, wanted)  # every shard with a copy (concurrent writers may have stored two)
    if not holders:
        stats = cache.stats()
        summary = CompactSummary(len(cache.shards), len(cache.shards), 0, bytes_before=stats["bytes"],
                                 bytes_after=stats["bytes"])  # fmt: skip
    else:
        summary = compact(path, shards=holders, progress=progress, fsync=fsync, _exclude=frozenset(wanted))
    after = open_cache(path)
    summary.requested, summary.not_found = len(wanted), not_found
    summary.remaining = sum(after.index_of(k) is not None for k in wanted)
    return summary


def _key_bytes(key: bytes | str) -> bytes:
    """A document key given as 32 bytes or 64 hex characters."""
    if isinstance(key, bytes) and len(key) == 32:
        return key
    text = key.hex() if isinstance(key, bytes) else key.strip().lower()
    if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
        raise ConfigError(
            f"key {text!r} is not a document key: give all 64 hex characters of its sha256 (`embrecycle cache stats "
            "CACHE --keys` lists every document's; `--data FILE` removes documents by content instead)"
        )
    return bytes.fromhex(text)


def _holders(root: Path, keys: set[bytes]) -> list[str]:
    """The shards holding a record of any of ``keys``."""
    out = []
    for name in list_shards(root):
        records, ok, _ = split_index(shard_paths(root, name)["index"].read_bytes())
        if any(k in keys for k in records[ok]["key"].tolist()):
            out.append(name)
    return out


def collect_garbage(path: str | os.PathLike[str]) -> list[str]:
    """Finish an interrupted merge and delete shard files no index refers to; returns what was deleted."""
    cache = _local(path, "gc")
    cache.require_undamaged("gc")  # a shard whose index is lost would look like garbage, and its loss vanish
    deleted = _finish_earlier(cache)
    indexed = set(list_shards(cache.root))
    for p in sorted((cache.root / SHARD_DIR).glob("*")):
        stem = _shard_of(p.name)
        if stem is None or stem in indexed or not p.is_file():
            continue
        lock = cache.root / SHARD_DIR / f"{stem}.lock"
        with _try_lock(lock) as mine:  # a writer that has not written its index yet holds its lock
            if mine:
                deleted.append(str(p))
                p.unlink(missing_ok=True)
    if deleted:
        cache.update_manifest_stats()
    return deleted


SHARD_FILES = (".plan.npz", ".index.tmp", ".hidden", ".tokens", ".index", ".lock")
"""The suffixes of a shard's files (shard names may hold dots themselves)."""


def _shard_of(file_name: str) -> str | None:
    """The shard a file under ``shards/`` belongs to (None: not a shard file, e.g. settings.json)."""
    for suffix in SHARD_FILES:
        if file_name.endswith(suffix) and len(file_name) > len(suffix):
            return file_name[: -len(suffix)]
    return None


def cache_stats(path: str | os.PathLike[str], keys: bool = False) -> dict[str, Any]:
    """Documents, tokens, bytes (per token), dtype, duplicates and what each shard holds; with ``keys``, also
    ``"keys"``: every document's key (hex), shard and tokens."""
    cache = open_cache(path)
    stats = cache.stats()
    stored = sum(cache.shard_records.values())
    shards = []
    for sid, name in enumerate(cache.shards):
        paths = shard_paths(cache.root, name)
        mine = cache.shard_ids == sid
        shards.append(
            {
                "name": name,
                "records": cache.shard_records.get(name, 0),
                "documents": int(mine.sum()),
                "tokens": int(cache.lengths[mine].sum()),
                "bytes": sum(paths[k].stat().st_size for k in ("hidden", "tokens", "index") if paths[k].exists()),
            }
        )
    listed: dict[str, Any] = {}
    if keys:
        listed["keys"] = [
            {"key": cache.keys[i].tobytes().hex(), "shard": cache.shards[int(cache.shard_ids[i])],
             "tokens": int(cache.lengths[i])}
            for i in range(len(cache))
        ]  # fmt: skip
    return {
        "location": cache.location,
        "dtype": cache.settings.dtype,
        "model": cache.settings.model,
        "layer": cache.settings.layer,
        **stats,
        "duplicates": stored - len(cache),
        "damage": list(cache.damage),
        "converted_from": cache.manifest.get("converted_from"),
        "shard_list": shards,
        **listed,
    }


# ---- the steps --------------------------------------------------------------------------------------


def _write_merged(cache: Cache, name: str, entries: list[int], fsync: bool, progress: bool) -> None:
    """Copy the stored rows of ``entries`` (as stored: no decoding) into the new shard ``name``."""
    s = cache.settings
    bar = tqdm(total=len(entries), desc="merge shards", unit="doc", disable=not progress)
    with ShardWriter(cache.root, name, s.hidden_size, s.dtype, fsync=fsync) as writer:
        for start in range(0, len(entries), BATCH_DOCUMENTS):
            batch = []
            for i in entries[start : start + BATCH_DOCUMENTS]:
                batch.append(cache.stored_entry(i))  # checksummed: nothing damaged is copied
            writer.append(batch)
            bar.update(len(batch))
    bar.close()


def _retire(cache: Cache, replaced: list[str], by: str | None) -> None:
    """Steps 2-4: name the replaced shards in the manifest (with their index files' identity), delete them,
    drop the note."""
    identity = {name: _identity(shard_paths(cache.root, name)["index"]) for name in replaced}
    _set_marker(cache, {"replaced": replaced, "identity": identity, "by": by})
    _delete_shards(cache.root, replaced)
    _set_marker(cache, None)


def _identity(index: Path) -> list[int] | None:
    """An index file's inode, size and modification time (a shard later written under a retired shard's name
    differs, even where the file system reuses the inode)."""
    try:
        st = index.stat()
    except FileNotFoundError:
        return None
    return [st.st_ino, st.st_size, st.st_mtime_ns]


def _same_identity(now: list[int] | None, recorded: Any) -> bool:
    """Whether an index file is the one recorded (a note written before the modification time was recorded holds
    inode and size only)."""
    return now is not None and isinstance(recorded, list) and len(recorded) >= 2 and now[: len(recorded)] == recorded


def _finish_earlier(cache: Cache) -> list[str]:
    """Finish the deletions of a merge that was interrupted after its new shard was complete."""
    marker = cache.manifest.get(MARKER)
    if not isinstance(marker, dict):
        return []
    identity = marker.get("identity", {})
    still_theirs = []
    for name in (str(n) for n in marker.get("replaced", [])):
        paths = shard_paths(cache.root, name)
        with _try_lock(paths["lock"]) as free:
            now = _identity(paths["index"])
            # a shard written under the freed name since (or being written now) is not the retired one
            if free and (now is None or _same_identity(now, identity.get(name))):
                still_theirs.append(name)
    deleted = _delete_shards(cache.root, still_theirs)
    _set_marker(cache, None)
    return deleted


def _set_marker(cache: Cache, marker: dict[str, Any] | None) -> None:
    """Write (or drop) the manifest's compaction note and recount its statistics, in one atomic write under the
    manifest lock (two writes would leave, between them, a manifest that counts deleted shards without the note
    that explains them)."""
    with open(cache.root / ".manifest.lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        cache.refresh()
        manifest = read_manifest(cache.root)
        if marker is None:
            manifest.pop(MARKER, None)
        else:
            manifest[MARKER] = marker
        now = datetime.now(UTC).isoformat(timespec="seconds")
        manifest["stats"] = {**cache.stats(), "shard_records": dict(cache.shard_records), "updated": now}
        write_manifest(cache.root / MANIFEST_NAME, manifest)
        cache.manifest = manifest
    cache.refresh()


def _delete_shards(root: Path, names: Sequence[str]) -> list[str]:
    """Delete shards: every index first (their documents vanish together), then the data and lock files."""
    deleted = []
    for name in names:
        index = shard_paths(root, name)["index"]
        if index.exists():
            index.unlink()
            deleted.append(str(index))
    for name in names:
        for kind, p in shard_paths(root, name).items():
            if kind != "index" and p.exists():
                p.unlink()
                deleted.append(str(p))
    return deleted


@contextlib.contextmanager
def _locked(root: Path, names: Sequence[str]) -> Iterator[tuple[list[str], list[str]]]:
    """Hold the write lock of each shard that no other process is writing: ``(held, busy)``."""
    held: list[str] = []
    busy: list[str] = []
    files: list[IO[bytes]] = []
    try:
        for name in names:
            f = open(shard_paths(root, name)["lock"], "a+b")  # noqa: SIM115 - closed below
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.close()
                busy.append(name)
                continue
            files.append(f)
            if not still_at(f, shard_paths(root, name)["lock"]):
                busy.append(name)  # its lock file was replaced (another merge retired it; a new writer may hold it)
                continue
            held.append(name)
        yield held, busy
    finally:
        for held_file in files:
            held_file.close()  # closing releases the lock (its file may be deleted already)


@contextlib.contextmanager
def _try_lock(path: Path) -> Iterator[bool]:
    """Whether no process holds ``path``'s lock (held for the block when so); True when there is no lock file."""
    if not path.exists():
        yield True
        return
    with open(path, "a+b") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield still_at(f, path)  # a lock file deleted and made anew since it was opened is not this one
