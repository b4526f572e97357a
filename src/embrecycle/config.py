"""Plumbing shared by every settings dataclass: help text, strict loading, versioned saving, checks.

A settings class is a ``@dataclass`` whose fields carry their help text
(``field(metadata={"help": ...})``, via :func:`setting`), inherits
:class:`Settings`, and lists its problems in ``problems()``; every problem is
reported at once in one :class:`~embrecycle.errors.ConfigError`. The command line
builds its options from the same fields (:mod:`embrecycle.cli_options`), so a
field's default and help exist in exactly one place.

Example:
    >>> @dataclass
    ... class Demo(Settings):
    ...     lr: float = setting(1e-3, "Peak learning rate.")
    ...     def problems(self) -> list[str]:
    ...         return Checks().positive(lr=self.lr).problems
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import MISSING, field
from typing import TYPE_CHECKING, Any, ClassVar, Self, TypeVar

from ._version import __version__
from .errors import ConfigError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

__all__ = ["VERSION_KEY", "Checks", "Settings", "from_dict", "setting"]

VERSION_KEY = "embrecycle_version"

T = TypeVar("T", bound="DataclassInstance")


def setting(
    default: Any = MISSING,
    help: str = "",
    *,
    default_factory: Callable[[], Any] | None = None,
    flag: str | None = None,
    cli: str | None = None,
    choices: Iterable[str] | None = None,
    **extra: Any,
) -> Any:
    """A dataclass field with its help text (and how the CLI shows it).

    Args:
        default: The default value (omit for a required field).
        help: One sentence for ``--help`` and the docs.
        default_factory: For mutable defaults.
        flag: The CLI flag when it is not the field name (e.g. ``--format`` for ``data_format``).
        cli: Set to a reason to keep this field off the command line (the CLI test checks every other field
            has a flag).
        choices: Valid values, shown in ``--help``.
        extra: Further metadata for the CLI (e.g. ``"hidden": True``).
    """
    metadata: dict[str, Any] = {"help": help, **extra}
    if flag is not None:
        metadata["flag"] = flag
    if cli is not None:
        metadata["cli_exclude"] = cli
    if choices is not None:
        metadata["choices"] = tuple(choices)
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


class Checks:
    """Collects every problem of a settings object, so one error can name them all."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def add(self, problem: str) -> Checks:
        self.problems.append(problem)
        return self

    def extend(self, problems: Iterable[str]) -> Checks:
        self.problems.extend(problems)
        return self

    def require(self, ok: bool, problem: str) -> Checks:
        if not ok:
            self.problems.append(problem)
        return self

    def positive(self, **values: float | int | None) -> Checks:
        """Every value must be > 0 (``None``: an unset optional, not checked)."""
        for k, v in values.items():
            if v is not None and not v > 0:
                self.problems.append(f"{k}={v!r} (must be positive)")
        return self

    def non_negative(self, **values: float | int | None) -> Checks:
        for k, v in values.items():
            if v is not None and not v >= 0:
                self.problems.append(f"{k}={v!r} (must be >= 0)")
        return self

    def within(
        self,
        name: str,
        value: float | None,
        low: float,
        high: float,
        *,
        low_open: bool = False,
        high_open: bool = False,
    ) -> Checks:
        """``low <= value <= high`` (``(`` / ``)`` ends with ``low_open`` / ``high_open``); None is not checked."""
        if value is None:
            return self
        ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
        if not ok:
            interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
            self.problems.append(f"{name}={value!r} (must be in {interval})")
        return self

    def choice(self, name: str, value: Any, choices: Iterable[Any], *, optional: bool = False) -> Checks:
        options = list(choices)
        if (value is None and optional) or value in options:
            return self
        shown = ", ".join(repr(c) for c in options) + (" or leave it unset" if optional else "")
        self.problems.append(f"{name}={value!r} (choose one of {shown})")
        return self

    def raise_if_any(self, what: str) -> None:
        if self.problems:
            raise ConfigError(f"invalid {what}: " + "; ".join(self.problems) + ".")


class Settings:
    """Mixin for settings dataclasses: validation in ``problems()``, strict ``from_dict``, versioned ``to_dict``."""

    settings_name: ClassVar[str] = ""
    """How error messages name these settings (default: the class name)."""

    if TYPE_CHECKING:  # every subclass is a @dataclass: this makes the mixin a DataclassInstance
        __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]

    def problems(self) -> list[str]:
        """Every problem with these values (empty when valid); subclasses extend this."""
        return []

    def __post_init__(self) -> None:
        found = self.problems()
        if found:
            raise ConfigError(
                f"invalid {self.settings_name or type(self).__name__} settings: " + "; ".join(found) + "."
            )

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Self:
        """Build from a dict (e.g. saved JSON), rejecting unknown keys by name; the version stamp is ignored."""
        return from_dict(cls, data or {})

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict stamped with the library version."""
        return {**dataclasses.asdict(self), VERSION_KEY: __version__}


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build dataclass ``cls`` from ``data``, rejecting unknown keys by name (and ignoring the version stamp)."""
    names = {f.name for f in dataclasses.fields(cls)}
    data = {k: v for k, v in data.items() if k != VERSION_KEY}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} keys {unknown}; valid keys are {sorted(names)}.")
    required = [
        f.name
        for f in dataclasses.fields(cls)
        if f.default is MISSING and f.default_factory is MISSING and f.init and f.name not in data
    ]
    if required:
        raise ConfigError(f"{cls.__name__} is missing required keys {required}.")
    return cls(**data)
