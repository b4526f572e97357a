"""Fault injection for the test suite: kill this process with SIGKILL at a chosen point of its work.

Off unless ``EMBRECYCLE_KILL_AT=N`` is set: then the N-th call of :func:`point` sends SIGKILL to the
process itself (a real ``kill -9``: no handler, no cleanup runs). With ``EMBRECYCLE_FAULT_LOG=FILE``
every point reached is appended to FILE, so a test can count the points of a run and choose where
to kill the next one. The points sit between the steps whose order decides what a kill can lose:
every atomic file write (before and after its rename), every training step, and every step of
publishing a run.
"""

from __future__ import annotations

import os
import signal

__all__ = ["point"]

_KILL_AT = int(os.environ.get("EMBRECYCLE_KILL_AT") or 0)
_LOG = os.environ.get("EMBRECYCLE_FAULT_LOG")
_reached = 0


def point(name: str) -> None:
    """A place where a kill may happen (see the module docstring); ``name`` is only logged."""
    global _reached
    if not _KILL_AT and not _LOG:
        return
    _reached += 1
    if _LOG:
        with open(_LOG, "a", encoding="utf-8") as f:
            f.write(f"{_reached} {name}\n")
    if _reached == _KILL_AT:
        os.kill(os.getpid(), signal.SIGKILL)
