"""Timing pieces of the benchmarks: a timed call, alternating variants, time spent in one method, CPU others took.

Absolute times only compare within one run on a shared machine; these helpers make the comparisons fair
(variants alternate, a garbage collection before a timed call) and flag a measurement that another
process disturbed.
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["CallTimer", "OtherCpu", "alternate", "timed"]


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Seconds ``fn`` takes (after a garbage collection), and its result."""
    gc.collect()
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def alternate(variants: dict[str, Callable[[], Any]], repeats: int) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Run every variant in turn, ``repeats`` rounds: the seconds of each run per variant, and each one's last result.

    Alternating spreads a slow spell of the machine over every variant; keep the best (``min``) of each.
    """
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    last: dict[str, Any] = {}
    for _ in range(repeats):
        for name, fn in variants.items():
            start = time.perf_counter()
            last[name] = fn()
            seconds[name].append(time.perf_counter() - start)
    return seconds, last


class CallTimer:
    """Seconds spent inside ``obj.<method>`` while the block runs (the instance's method is wrapped, then restored).

    Timing one part (say the forward pass) inside each run lets the rest of the run be measured in the same
    run, so that the run-to-run noise of that part, larger than the rest, cancels.
    """

    def __init__(self, obj: Any, method: str) -> None:
        self.obj, self.method = obj, method
        self.seconds = 0.0

    def __enter__(self) -> CallTimer:
        original = getattr(self.obj, self.method)

        def timed_call(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

        setattr(self.obj, self.method, timed_call)
        return self

    def __exit__(self, *exc: object) -> None:
        delattr(self.obj, self.method)


class OtherCpu:
    """Cores' worth of CPU that other processes (and the hypervisor) took while the block ran.

    From ``/proc/stat`` (all busy time, steal included) minus this process's own CPU time;
    ``cores`` stays NaN where ``/proc/stat`` is unavailable. A sign of a noisy measurement.
    """

    cores: float = float("nan")

    def __enter__(self) -> OtherCpu:
        self._start = (_machine_busy_s(), _own_cpu_s(), time.perf_counter())
        return self

    def __exit__(self, *exc: object) -> None:
        busy0, own0, wall0 = self._start
        busy1, own1, wall1 = _machine_busy_s(), _own_cpu_s(), time.perf_counter()
        if busy0 is not None and busy1 is not None and wall1 > wall0:
            self.cores = max(0.0, (busy1 - busy0) - (own1 - own0)) / (wall1 - wall0)


def _machine_busy_s() -> float | None:
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system
