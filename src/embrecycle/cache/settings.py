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
from .format import FORMAT_VERSION, STORAGE_DTYPES

MANIFEST_NAME = "manifest.json"
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
        dtype: Storage dtype: ``float16``, ``bfloat16`` or ``float32``.
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
        checks = (
            Checks()
            .choice("dtype", self.dtype, sorted(STORAGE_DTYPES))
            .choice("truncation", self.truncation, TRUNCATION_MODES)
            .within("layer", self.layer, 0, self.num_layers)
            .choice("precision", self.precision, PRECISIONS)
        )
        checks.require(self.max_length >= 2, f"max_length={self.max_length} (use at least 2: room for special tokens)")
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
    def from_dict(cls, data: dict[str, Any]) -> CacheSettings:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise CacheCorruptedError(f"manifest settings have unknown keys {unknown}; known: {sorted(known)}.")
        return cls(**data)

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


def atomic_write_json(path: Path, data: Any) -> None:
    """Write JSON so that readers see the old or the new file, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def new_manifest(settings: CacheSettings) -> dict[str, Any]:
    now = datetime.now(UTC).isoformat(timespec="seconds")
    return {
        "format": "embrecycle-cache",
        "format_version": FORMAT_VERSION,
        "library_version": __version__,
        "created": now,
        "settings": settings.to_dict(),
        "stats": {"documents": 0, "tokens": 0, "bytes": 0, "shards": 0, "updated": now},
    }


def read_manifest(root: Path) -> dict[str, Any]:
    path = root / MANIFEST_NAME
    if not path.exists():
        raise FileNotFoundError(
            f"no cache at {root}: {MANIFEST_NAME} is missing. Build one with `embrecycle cache build ... --out {root}`."
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CacheCorruptedError(f"cannot read {path}: {e}") from e
    if data.get("format") != "embrecycle-cache":
        raise CacheCorruptedError(f"{path} is not an embrecycle cache manifest (format={data.get('format')!r}).")
    if data.get("format_version") != FORMAT_VERSION:
        raise CacheCorruptedError(
            f"{path} has cache format version {data.get('format_version')!r}; this embrecycle "
            f"({__version__}) reads version {FORMAT_VERSION}. Rebuild the cache or use a matching embrecycle."
        )
    return data
