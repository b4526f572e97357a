"""One exception hierarchy for every error the library raises on purpose.

Each class also subclasses the built-in it resembles, so ``except ValueError``
keeps working for callers that do not know about embrecycle.
"""

from __future__ import annotations


class EmbRecycleError(Exception):
    """Base class of every embrecycle error."""


class ConfigError(EmbRecycleError, ValueError):
    """A setting has a bad value, or an unknown key was given."""


class UnsupportedModelError(EmbRecycleError, ValueError):
    """The encoder's architecture has no split adapter."""


class ModelLoadError(EmbRecycleError, OSError):
    """A model or tokenizer could not be loaded from the given name or path."""


class MissingDependencyError(EmbRecycleError, ImportError):
    """An optional feature needs a package that is not installed (the message names the extra to install)."""


class InputDataError(EmbRecycleError, ValueError):
    """An input file is unreadable, malformed, or lacks a required field."""


class CacheError(EmbRecycleError):
    """Base class of cache errors."""


class CacheMismatchError(CacheError, ValueError):
    """A cache was opened with settings that differ from the ones it was built with."""


class CacheCorruptedError(CacheError, OSError):
    """A cache file is truncated, has a bad checksum or an unreadable manifest."""


class UnstorableStatesError(CacheError, ValueError):
    """A document's states hold NaN or infinite values, or values beyond the range of the cache's storage
    dtype."""


class CacheLockedError(CacheError, RuntimeError):
    """Another process holds the cache's write lock."""


class CacheMissError(CacheError, KeyError):
    """A document is not in the cache."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else "document not in cache"


class UnknownTaskError(EmbRecycleError, KeyError):
    """A task (run) name that a task set or server does not hold."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class RunError(EmbRecycleError, OSError):
    """Base class of run-directory errors (what ``embrecycle train`` writes)."""


class IncompleteRunError(RunError):
    """A run directory did not finish training (interrupted, or still being trained): resume it or re-run."""


class RunExistsError(RunError, FileExistsError):
    """The run directory to write exists already (pass ``overwrite=True`` / ``--overwrite`` to replace it)."""


class NotARunError(RunError, FileNotFoundError):
    """The directory given as a run has no ``run.json``."""


class RunCorruptedError(RunError):
    """A run file is truncated or damaged."""


class DiskFullError(EmbRecycleError, OSError):
    """Not enough free disk space for what must be written (checked before the work, or hit while writing)."""
