"""Where a cache lives: a local directory, or a URL that fsspec opens (``s3://``, ``gs://``, ``memory://``, ...).

A cache at a URL is used through a local mirror (``$EMBRECYCLE_CACHE_HOME/remote/<hash of the URL>``):

- opening it downloads the manifest and every shard's index (small: 64 bytes per document);
- a shard's data files are downloaded the first time one of its documents is read, and kept
  while their remote size is unchanged: training reads every document several times, so a
  whole-shard copy pays for itself on the first epoch;
- writers write shards in the mirror (crash-safe, resumable, as for a local cache) and upload
  a finished shard's data files before its index, so a reader never sees an index whose data
  is missing; the manifest is uploaded last.

``file://`` URLs are local paths. Anything else goes through :func:`fsspec.core.url_to_fs`, so
every filesystem fsspec knows works once its package (``s3fs``, ``gcsfs``, ...) is installed.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigError
from .shard import SHARD_DIR

if TYPE_CHECKING:
    from .settings import CacheSettings

__all__ = ["Remote", "cache_home", "default_cache_dir", "is_remote", "local_path", "mirror_home"]

SHARD_FILES = ("hidden", "tokens", "index")
"""A shard's files, in upload order: the index goes last."""


def is_remote(location: str | os.PathLike[str]) -> bool:
    """Whether ``location`` is a URL other than ``file://`` (a local path otherwise)."""
    text = os.fspath(location)
    return "://" in text and not text.startswith("file://")


def local_path(location: str | os.PathLike[str]) -> Path:
    """The directory of a local location (a path or a ``file://`` URL)."""
    text = os.fspath(location)
    return Path(text[len("file://") :]) if text.startswith("file://") else Path(text)


def cache_home() -> Path:
    """``$EMBRECYCLE_CACHE_HOME``, default ``~/.cache/embrecycle/caches``: where caches go when none is named."""
    return Path(os.environ.get("EMBRECYCLE_CACHE_HOME", Path.home() / ".cache" / "embrecycle" / "caches"))


def default_cache_dir(settings: CacheSettings, root: str | os.PathLike[str] | None = None) -> Path:
    """The cache directory of ``settings`` under ``root`` (default :func:`cache_home`).

    Named ``<model>-L<k>-<dtype>-<fingerprint of the key settings>``, so two settings never share a directory.
    """
    name = Path(settings.model.rstrip("/")).name or "model"
    base = Path(root) if root is not None else cache_home()
    return base / f"{name}-L{settings.layer}-{settings.dtype}-{settings.fingerprint()[:12]}"


def mirror_home() -> Path:
    """Folder holding the local mirrors of caches at URLs."""
    return cache_home() / "remote"


class Remote:
    """A cache directory at a URL, and its local mirror.

    Args:
        url: The cache's URL (``s3://bucket/caches/sci-cite-k6``).
        mirror: Local mirror directory; default ``mirror_home()/<sha256(url)[:16]>``.
    """

    def __init__(self, url: str, mirror: str | os.PathLike[str] | None = None) -> None:
        import fsspec

        self.url = url.rstrip("/")
        try:
            self.fs, self.path = fsspec.core.url_to_fs(self.url)
        except (ImportError, ValueError) as e:
            raise ConfigError(
                f"cannot open cache URL {url!r}: {e}. Install the fsspec backend for its scheme "
                "(s3fs for s3://, gcsfs for gs://, adlfs for az://) or give a local directory."
            ) from e
        self.mirror = Path(mirror) if mirror else mirror_home() / hashlib.sha256(self.url.encode()).hexdigest()[:16]
        self.mirror.mkdir(parents=True, exist_ok=True)
        self.sizes: dict[str, int] = {}  # relative path -> size at the last listing

    def __repr__(self) -> str:
        return f"Remote({self.url!r}, mirror={str(self.mirror)!r})"

    def _remote(self, rel: str) -> str:
        return f"{self.path.rstrip('/')}/{rel}"

    def exists(self, rel: str) -> bool:
        return bool(self.fs.exists(self._remote(rel)))

    def list_meta(self) -> dict[str, int]:
        """Sizes of the manifest and every shard file at the URL (one listing)."""
        sizes: dict[str, int] = {}
        shard_dir = self._remote(SHARD_DIR)
        if self.fs.exists(shard_dir):
            for info in self.fs.ls(shard_dir, detail=True):
                name = str(info["name"]).rstrip("/").rsplit("/", 1)[-1]
                sizes[f"{SHARD_DIR}/{name}"] = int(info.get("size") or 0)
        self.sizes = sizes
        return sizes

    def pull(self, rel: str, size: int | None = None) -> Path:
        """Download ``rel`` into the mirror unless the local copy already has ``size`` bytes."""
        local = self.mirror / rel
        if size is not None and local.exists() and local.stat().st_size == size:
            return local
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(local.name + f".part-{secrets.token_hex(4)}")
        self.fs.get(self._remote(rel), str(tmp))
        os.replace(tmp, local)
        return local

    def pull_meta(self) -> None:
        """Download the manifest and every shard index that changed since the last pull."""
        self.pull("manifest.json")
        for rel, size in self.list_meta().items():
            if rel.endswith(".index"):
                self.pull(rel, size)

    def pull_shard_data(self, name: str) -> None:
        """Make sure the mirror holds shard ``name``'s data files as they are at the URL."""
        for kind in ("hidden", "tokens"):
            rel = f"{SHARD_DIR}/{name}.{kind}"
            if rel in self.sizes:
                self.pull(rel, self.sizes[rel])

    def push(self, rel: str) -> None:
        """Upload the mirror's ``rel`` (written whole: readers see the old or the new file)."""
        local = self.mirror / rel
        self.fs.makedirs(self._remote(rel).rsplit("/", 1)[0], exist_ok=True)
        self.fs.put_file(str(local), self._remote(rel))
        self.sizes[rel] = local.stat().st_size

    def push_shard(self, name: str, root: Path | None = None) -> None:
        """Upload shard ``name`` (from ``root``, default the mirror): data files first, the index last."""
        base = (root or self.mirror) / SHARD_DIR
        for kind in SHARD_FILES:
            rel = f"{SHARD_DIR}/{name}.{kind}"
            src = base / f"{name}.{kind}"
            if not src.exists():
                continue
            self.fs.makedirs(self._remote(SHARD_DIR), exist_ok=True)
            self.fs.put_file(str(src), self._remote(rel))
            self.sizes[rel] = src.stat().st_size

    def push_pending(self) -> list[str]:
        """Upload every shard of the mirror written here and not (or not wholly) at the URL; their names."""
        pushed = []
        local_dir = self.mirror / SHARD_DIR
        for index in sorted(local_dir.glob("*.index")) if local_dir.is_dir() else []:
            name = index.name[: -len(".index")]
            rel = f"{SHARD_DIR}/{index.name}"
            if self.sizes.get(rel) == index.stat().st_size:
                continue
            if not all((local_dir / f"{name}.{kind}").exists() for kind in ("hidden", "tokens")):
                continue  # only its index was pulled: it belongs to another writer
            self.push_shard(name)
            pushed.append(name)
        return pushed

    def size(self, rel: str) -> int:
        return self.sizes.get(rel, 0)
