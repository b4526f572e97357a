"""What every benchmark results file holds: the machine it ran on, and the writing of results and report."""

from __future__ import annotations

import json
import os
import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import torch
import transformers

from .._version import __version__
from ..hardware import cpu_bf16_units

__all__ = ["MACHINE_KEYS", "cpu_model", "environment", "machine_identity", "write_results"]


def cpu_model() -> str:
    """The processor's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def environment() -> dict[str, Any]:
    """Machine, libraries and date: where the numbers come from."""
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu": cpu_model(),
        "cpus": psutil.cpu_count(),
        "threads": torch.get_num_threads(),
        "cpu_bf16_units": list(cpu_bf16_units()),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "embrecycle": __version__,
    }


MACHINE_KEYS = ("cpu", "cpus", "threads", "cpu_bf16_units")
"""What identifies the machine a timing was taken on (a timing is comparable only to one taken on the same)."""


def machine_identity(*extra: str) -> dict[str, Any]:
    """The :data:`MACHINE_KEYS` of :func:`environment` (and ``extra`` keys of it): the key a kept timing row is
    matched on, so that a resumed benchmark re-measures on another machine and keeps what it measured here."""
    env = environment()
    return {k: env[k] for k in (*MACHINE_KEYS, *extra)}


def write_results(result: dict[str, Any], out: Path, stem: str, report: str | None = None) -> Path:
    """``<out>/<stem>.json`` (and ``<out>/<stem>.md`` with ``report``); returns the JSON file."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{stem}.json"
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    if report is not None:
        (out / f"{stem}.md").write_text(report, encoding="utf-8")
    return path
