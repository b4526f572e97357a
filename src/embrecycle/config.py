"""Helpers shared by the configuration dataclasses: strict loading and saving with a version stamp."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, TypeVar

from ._version import __version__
from .errors import ConfigError

T = TypeVar("T")


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build dataclass ``cls`` from ``data``, rejecting unknown keys by name."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    data = {k: v for k, v in data.items() if k != "embrecycle_version"}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} keys {unknown}; valid keys are {sorted(names)}.")
    return cls(**data)


def to_dict(obj: Any) -> dict[str, Any]:
    """A dataclass as a JSON-ready dict stamped with the library version."""
    return {**dataclasses.asdict(obj), "embrecycle_version": __version__}


def save_json(obj: Any, path: Path) -> None:
    path.write_text(json.dumps(to_dict(obj), indent=2) + "\n", encoding="utf-8")


def check_positive(**values: float | int | None) -> None:
    """Raise one ConfigError listing every value that is not > 0 (``None``: an unset optional, not checked)."""
    bad = [f"{k}={v!r}" for k, v in values.items() if v is not None and not v > 0]
    if bad:
        raise ConfigError(f"these settings must be positive: {', '.join(bad)}.")
