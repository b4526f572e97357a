"""What made a cache: the settings that change the stored states, and the manifest."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .._version import __version__
from ..config import Checks
from ..errors import CacheCorruptedError, CacheMismatchError
from ..hardware import PRECISIONS
from .codecs import CODECS, canonical_dtype
from .format import QUANTISED_FORMAT_VERSION, READABLE_VERSIONS, STORAGE_DTYPES, format_version

MANIFEST_NAME = "manifest.json"
OWN_FILES = frozenset({".manifest.lock", "shards"})
"""What a cache directory may hold besides its manifest without holding states (``shards`` if it has no index)."""


def is_own_file(name: str) -> bool:
    """Whether ``name`` in a cache directory is the cache's own bookkeeping (a lock, a killed manifest write)."""
    return name in OWN_FILES or (name.startswith(f".{MANIFEST_NAME}.") and name.endswith(".tmp"))


SETTINGS_COPY = "shards/settings.json"
"""A copy of the cache's settings beside its shards, from which ``cache verify --repair`` restores a lost manifest."""
TRUNCATION_MODES = ("truncate", "error")

# Settings that change the stored states: two caches agree only if all match.
KEY_FIELDS = (
    "model_type",
    "lower_fingerprint",
    "layer",
    "hidden_size",
    "tokenizer_fingerprint",
    "max_length",
    "truncation",
    "dtype",
    "precision",
)


@dataclass(frozen=True)
class CacheSettings:
    """Everything that determines the states stored in a cache.

    Attributes:
        model: Model name or path as given by the user (informational: moving a
            local model keeps the cache valid, since identity is the fingerprint).
        model_revision: Hub revision, if any.
        model_type: ``config.model_type``.
        lower_fingerprint: sha256 of the weights the cached states depend on
            (embeddings and layers 1..k).
        layer: Number of layers run before caching (0 = embeddings output).
        num_layers: Total layers of the encoder.
        hidden_size: Width of the stored states.
        tokenizer: Tokenizer name or path as given.
        tokenizer_fingerprint: sha256 of the tokenizer's full definition.
        max_length: Maximum tokens per document, special tokens included.
        truncation: ``"truncate"`` (longer documents are cut, and counted) or
            ``"error"`` (a longer document stops the build).
        dtype: Storage dtype: ``float16``, ``bfloat16``, ``float32``, or a quantised one (``int8-token``,
            ``int8-g64``, ``int4-g64``, ``int4-g32``; aliases ``int8`` and ``int4``): :mod:`.codecs`.
        precision: Compute precision of the lower layers that made the states: ``fp32``, ``bf16`` or
            ``fp16`` (states computed in bf16 differ from float32 ones stored as bf16).
    """

    model: str
    model_revision: str | None
    model_type: str
    lower_fingerprint: str
    layer: int
    num_layers: int
    hidden_size: int
    tokenizer: str
    tokenizer_fingerprint: str
    max_length: int
    truncation: str = "truncate"
    dtype: str = "float16"
    precision: str = "fp32"

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", canonical_dtype(self.dtype))  # an alias (int8) records its full name
        checks = (
            Checks()
            .choice("dtype", self.dtype, STORAGE_DTYPES)
            .choice("truncation", self.truncation, TRUNCATION_MODES)
            .within("layer", self.layer, 0, self.num_layers)
            .choice("precision", self.precision, PRECISIONS)
        )
        checks.require(self.max_length >= 2, f"max_length={self.max_length} (use at least 2: room for special tokens)")
        if self.dtype in CODECS:
            problem = CODECS[self.dtype].problem(self.hidden_size)
            checks.require(problem is None, str(problem))
        checks.raise_if_any("cache settings")

    def fingerprint(self) -> str:
        """sha256 of the key settings; part of every document key.

        The compute precision enters only when it is not fp32, so caches made before it was recorded
        (all fp32) keep their keys.
        """
        values = {k: getattr(self, k) for k in KEY_FIELDS if not (k == "precision" and self.precision == "fp32")}
        payload = json.dumps(values, sort_keys=True).encode()
        return hashlib.sha256(payload).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, where: str = "manifest") -> CacheSettings:
        if not isinstance(data, dict):
            raise CacheCorruptedError(f"{where}: settings are {type(data).__name__}, not an object.")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise CacheCorruptedError(f"{where}: settings have unknown keys {unknown}; known: {sorted(known)}.")
        try:
            return cls(**data)
        except (TypeError, ValueError) as e:
            raise CacheCorruptedError(f"{where}: unusable settings ({e}).") from e

    def check_matches(self, other: CacheSettings, where: str) -> None:
        """Raise :class:`CacheMismatchError` naming every key setting that differs."""
        diffs = [
            f"{k}: cache has {getattr(self, k)!r}, requested {getattr(other, k)!r}"
            for k in KEY_FIELDS
            if getattr(self, k) != getattr(other, k)
        ]
        if diffs:
            hint = ""
            if any(d.startswith("lower_fingerprint") for d in diffs):
                hint = f" (cache built from model {self.model!r}, requested {other.model!r})"
            if self.precision != other.precision:
                hint += (
                    f" (its states were computed in {self.precision}: pass --precision {self.precision} to use it, "
                    f"or a new --cache for {other.precision} states)"
                )
            raise CacheMismatchError(
                f"the cache at {where} was built with different settings{hint}:\n  - "
                + "\n  - ".join(diffs)
                + "\nUse a new --cache directory for these settings, or request the cache's own settings."
            )


def current_umask() -> int:
    """The process's umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_json(path: Path, data: Any) -> None:
    """Write JSON so that readers see the old or the new file, never a mix (mode ``0o666`` less the umask,
    as ``open`` would create it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=False)
            f.write("\n")
            f.flush()
            os.fchmod(f.fileno(), 0o666 & ~current_umask())  # mkstemp makes 0600
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


MANIFEST_CHECKSUM = "manifest_sha256"
"""The manifest's own checksum: sha256 of the file's exact bytes as written without this (last) key."""


def _json_bytes(data: Any) -> bytes:
    return (json.dumps(data, indent=2) + "\n").encode("utf-8")  # what atomic_write_json writes


def _manifest_checksum(data: dict[str, Any]) -> str:
    return hashlib.sha256(_json_bytes({k: v for k, v in data.items() if k != MANIFEST_CHECKSUM})).hexdigest()


def write_manifest(path: Path, data: dict[str, Any]) -> None:
    """Write a cache manifest atomically, sealed with its checksum (:data:`MANIFEST_CHECKSUM`, the last key)."""
    body = {k: v for k, v in data.items() if k != MANIFEST_CHECKSUM}
    atomic_write_json(path, {**body, MANIFEST_CHECKSUM: _manifest_checksum(body)})


def new_manifest(
    settings: CacheSettings, key_fingerprint: str | None = None, converted_from: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A new cache's manifest. ``key_fingerprint``: the settings fingerprint its document keys are made under when
    it is not its own (a converted cache keeps its source's keys); ``converted_from``: what it was converted from.
    """
    now = datetime.now(UTC).isoformat(timespec="seconds")
    foreign_keys = key_fingerprint is not None and key_fingerprint != settings.fingerprint()
    manifest: dict[str, Any] = {
        "format": "embrecycle-cache",
        # a reader that ignores key_fingerprint would miss every document: older readers must refuse such a cache
        "format_version": max(format_version(settings.dtype), QUANTISED_FORMAT_VERSION if foreign_keys else 0),
        "library_version": __version__,
        "created": now,
        "settings": settings.to_dict(),
        "settings_fingerprint": settings.fingerprint(),
    }
    if foreign_keys:
        manifest["key_fingerprint"] = key_fingerprint
    if converted_from is not None:
        manifest["converted_from"] = converted_from
    manifest["stats"] = {"documents": 0, "tokens": 0, "bytes": 0, "shards": 0, "updated": now}
    return manifest


def key_fingerprint(manifest: dict[str, Any], settings: CacheSettings) -> str:
    """The settings fingerprint a cache's document keys are made under (its own, unless it was converted)."""
    return str(manifest.get("key_fingerprint") or settings.fingerprint())


def settings_copy_path(root: Path) -> Path:
    """Where a cache keeps a copy of its settings next to its shards (to restore a lost manifest)."""
    return root / SETTINGS_COPY


PROVENANCE = ("key_fingerprint", "converted_from")
"""Manifest entries a converted cache's settings copy keeps too (a restored manifest must keep its keys)."""


def provenance(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest's :data:`PROVENANCE` entries that it has."""
    return {k: manifest[k] for k in PROVENANCE if k in manifest}


def write_settings_copy(root: Path, settings: CacheSettings, kept: dict[str, Any] | None = None) -> None:
    """Keep a copy of the settings (and of a converted cache's :data:`PROVENANCE`) beside the shards."""
    data: dict[str, Any] = {"settings": settings.to_dict(), "settings_fingerprint": settings.fingerprint()}
    data.update({k: v for k, v in (kept or {}).items() if k in PROVENANCE})
    atomic_write_json(settings_copy_path(root), data)


def read_copied_provenance(root: Path) -> dict[str, Any]:
    """The :data:`PROVENANCE` entries the settings copy keeps (none for a cache that was built, not converted)."""
    try:
        data = json.loads(settings_copy_path(root).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return provenance(data) if isinstance(data, dict) else {}


def read_settings_copy(root: Path) -> CacheSettings | None:
    """The settings copy of the cache at ``root``, or None when it is missing or damaged."""
    path = settings_copy_path(root)
    try:
        raw = path.read_bytes()
        data = json.loads(raw.decode("utf-8"))
        settings = CacheSettings.from_dict(data["settings"], str(path))
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, CacheCorruptedError):
        return None
    if raw != _json_bytes(data):  # not exactly as written: damaged (or edited)
        return None
    return settings if data.get("settings_fingerprint") == settings.fingerprint() else None


def has_shards(root: Path) -> bool:
    return any((root / "shards").glob("*.index"))


def missing_manifest_error(root: Path) -> OSError:
    """The error for a cache directory without its manifest: nothing to open, or shards to recover."""
    path = root / MANIFEST_NAME
    if not has_shards(root):
        return FileNotFoundError(
            f"no cache at {root}: {MANIFEST_NAME} is missing. Build one with `embrecycle cache build ... --out {root}`."
        )
    if read_settings_copy(root) is not None:
        how = (
            f"run `embrecycle cache verify --repair {root}` to restore it from {settings_copy_path(root)}, "
            f"or re-run the `embrecycle cache build ... --out {root}` that made it"
        )
    else:
        how = (
            f"re-run the `embrecycle cache build ... --out {root}` that made it (same --model, --layer, "
            "--max-length, --truncation, --dtype and --precision, with any of its documents): it restores the "
            "manifest once it finds its documents in the shards"
        )
    return CacheCorruptedError(f"{path} is missing but {root / 'shards'} holds cached states: {how}.")


def read_manifest(root: Path) -> dict[str, Any]:
    """The parsed manifest of the cache at ``root``, checked.

    Raises:
        FileNotFoundError: no cache at ``root``.
        CacheCorruptedError: the manifest is missing beside shards, unreadable or inconsistent (the message says
            how to restore it).
    """
    path = root / MANIFEST_NAME
    if not path.exists():
        raise missing_manifest_error(root)
    try:
        raw = path.read_bytes()
        data = json.loads(raw.decode("utf-8"))
        _check_manifest(data, path)
        _check_sealed(data, raw, path)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, CacheCorruptedError) as e:
        text = str(e) if isinstance(e, CacheCorruptedError) else f"cannot read {path}: {e}"
        raise CacheCorruptedError(f"{text.rstrip('.')}. {_manifest_fix(root)}") from e
    return data


def _check_manifest(data: Any, path: Path) -> None:
    if not isinstance(data, dict) or data.get("format") != "embrecycle-cache":
        shown = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise CacheCorruptedError(f"{path} is not an embrecycle cache manifest (format={shown!r})")
    if data.get("format_version") not in READABLE_VERSIONS:
        raise CacheCorruptedError(
            f"{path} has cache format version {data.get('format_version')!r}; this embrecycle "
            f"({__version__}) reads versions {READABLE_VERSIONS} (made by another embrecycle: use a matching one)"
        )
    settings = CacheSettings.from_dict(data.get("settings"), str(path))
    recorded = data.get("settings_fingerprint")
    if recorded is not None and recorded != settings.fingerprint():
        raise CacheCorruptedError(
            f"{path}: its settings do not match their recorded fingerprint (the file was modified or damaged)"
        )


def _check_sealed(data: dict[str, Any], raw: bytes, path: Path) -> None:
    """A manifest with a checksum must be exactly the bytes it was written as (one written before 0.2 has none)."""
    recorded = data.get(MANIFEST_CHECKSUM)
    if recorded is None:
        return
    if recorded != _manifest_checksum(data) or raw != _json_bytes(data):
        raise CacheCorruptedError(f"{path} does not match its {MANIFEST_CHECKSUM} (the file was modified or damaged)")


def _manifest_fix(root: Path) -> str:
    if read_settings_copy(root) is not None:
        copy = settings_copy_path(root)
        fix = f"delete it and run `embrecycle cache verify --repair {root}` (restores it from {copy})"
        return f"If it was damaged, {fix}."
    return (
        f"If it was damaged, delete it and re-run the `embrecycle cache build ... --out {root}` that made it: "
        "it restores the manifest once it finds its documents in the shards."
    )
