"""Peak memory of one training configuration, measured in a fresh process.

Run as ``python -m embrecycle.bench.memory`` with a :class:`~embrecycle.training.TrainConfig`
as JSON on standard input; prints ``{"peak_rss_bytes": ..., "baseline_rss_bytes": ...}``.

The configuration is trained twice: the first run builds its cache (a recycling run's cache
build is a one-off, not part of its training footprint) and loads every library; then freed
memory is handed back to the system, the kernel's resident-set high-water mark is reset
(``/proc/self/clear_refs``), and the second run, reading the cache, is measured.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import sys
from pathlib import Path
from typing import Any

__all__ = ["measure"]


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise OSError(f"{field} not in /proc/self/status")


def _reset_peak() -> None:
    with contextlib.suppress(OSError):  # not glibc: nothing to hand back
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")


def measure(config: dict[str, Any]) -> dict[str, int]:
    """Train ``config`` twice in this process; the second run's peak resident set (Linux only)."""
    from ..training import TrainConfig, train

    first = TrainConfig(**{**config, "out": config["out"] + "-first"})
    train(first, progress=False)
    _reset_peak()
    baseline = _status_bytes("VmRSS")
    train(TrainConfig(**config), progress=False)
    return {"peak_rss_bytes": _status_bytes("VmHWM"), "baseline_rss_bytes": baseline}


def main() -> None:
    logging.disable(logging.WARNING)
    print(json.dumps(measure(json.loads(sys.stdin.read()))))


if __name__ == "__main__":
    main()
