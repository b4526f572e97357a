"""One progress convention for every long call.

* ``progress=True`` on a terminal: a tqdm bar on stderr;
* ``progress=True`` when stderr is not a terminal (a log file, CI): one plain line every
  ``EMBRECYCLE_PROGRESS_SECONDS`` seconds (default 10) and one at the end, instead of
  tqdm's carriage-return flood;
* ``progress=False`` (the CLI's ``-q``): nothing, including the weight-loading bars of
  transformers (see :func:`set_quiet`).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Protocol

__all__ = ["Progress", "progress_bar", "set_quiet"]


class Progress(Protocol):
    n: int  # units done so far (tqdm's counter)

    def update(self, n: int = 1) -> Any: ...
    def set_postfix(self, **values: Any) -> Any: ...
    def close(self) -> Any: ...


class _Silent:
    def __init__(self) -> None:
        self.n = 0

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, **values: Any) -> None:
        pass

    def close(self) -> None:
        pass


class _Lines:
    """Plain progress lines for logs: ``desc: 120/400 step (30%), 4.1 step/s, loss=0.52``."""

    def __init__(self, total: int | None, desc: str, unit: str, every: float) -> None:
        self.total, self.desc, self.unit, self.every = total, desc, unit, every
        self.n = 0
        self.postfix: dict[str, Any] = {}
        self.start = self.last = time.monotonic()
        self.closed = False

    def _line(self) -> str:
        elapsed = time.monotonic() - self.start
        done = f"{self.n}/{self.total}" if self.total else str(self.n)
        share = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        rate = f", {self.n / elapsed:.1f} {self.unit}/s" if elapsed > 0 else ""
        extra = "".join(f", {k}={v}" for k, v in self.postfix.items())
        return f"{self.desc}: {done} {self.unit}{share}{rate}{extra}, {elapsed:.0f} s"

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            print(self._line(), file=sys.stderr, flush=True)

    def set_postfix(self, **values: Any) -> None:
        self.postfix = values

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            print(self._line(), file=sys.stderr, flush=True)


def progress_bar(total: int | None, desc: str, unit: str = "it", enabled: bool = True) -> Progress:
    """A progress reporter following the module's convention."""
    if not enabled:
        return _Silent()
    if sys.stderr.isatty():
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit)
    every = float(os.environ.get("EMBRECYCLE_PROGRESS_SECONDS", "10"))
    return _Lines(total, desc, unit, every)


def set_quiet(quiet: bool) -> None:
    """Silence (or restore) the progress bars that transformers and the hub client draw while loading weights."""
    from transformers.utils import logging as hf_logging

    if quiet:
        hf_logging.disable_progress_bar()
    else:
        hf_logging.enable_progress_bar()
    try:
        from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

        (disable_progress_bars if quiet else enable_progress_bars)()
    except ImportError:  # pragma: no cover - huggingface_hub always comes with transformers
        pass
