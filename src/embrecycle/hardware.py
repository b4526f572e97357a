"""Where a model runs and in which precision: device and precision options, resolved once per run.

* ``device``: ``auto`` (CUDA when available, else Apple MPS when available, else the CPU) | ``cpu`` |
  ``cuda`` | ``cuda:N`` | ``mps``;
* ``precision``: ``auto`` | ``fp32`` | ``bf16`` | ``fp16``. ``auto`` is bf16 where the hardware runs it
  natively (a CUDA device with bf16 support; a CPU with AMX or AVX512-BF16, read from
  ``/proc/cpuinfo`` at run time), else fp32. fp16 only when asked for, on CUDA (training then scales
  the loss). Mixed precision is autocast: weights and optimiser state stay float32, and so do saved
  weights.

``EMBRECYCLE_PRECISION`` (``fp32``, ``bf16``, ``fp16``) sets what ``auto`` means for a whole process (the
test suite pins fp32 with it, so exact comparisons do not depend on the machine's bf16 units).

bf16 asked for on a CPU without those units (read from ``/proc/cpuinfo``) still runs, emulated, with a
warning: on an AVX2-only CPU MiniLM-L6 trained 25x slower than in fp32
(``benchmarks/results/bf16_emulated.md``).

The torch thread count follows the cores this process may use (``os.sched_getaffinity``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import ConfigError

log = logging.getLogger(__name__)

__all__ = [
    "DEVICE_CHOICES",
    "DEVICE_HELP",
    "FP32_CPU",
    "PRECISIONS",
    "PRECISION_CHOICES",
    "PRECISION_HELP",
    "Hardware",
    "autocast",
    "configure_threads",
    "cpu_bf16_units",
    "emulated_bf16",
    "hardware_problems",
    "resolve_hardware",
]

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
"""What ``--device`` takes (``cuda:N``: a CUDA device by index)."""
PRECISIONS = ("fp32", "bf16", "fp16")
"""Compute precisions a run or a cache can have."""
PRECISION_CHOICES = ("auto", *PRECISIONS)
DEVICE_HELP = "auto (CUDA, else MPS, else CPU), cpu, cuda, cuda:N, mps"
"""What every ``--device`` setting's help says it takes."""
PRECISION_HELP = "auto (bf16 where the hardware runs it natively, else fp32), fp32, bf16, fp16 (CUDA)"
"""What every ``--precision`` setting's help says it takes."""
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@functools.cache
def cpu_bf16_units() -> tuple[str, ...]:
    """The CPU's native bf16 units among ``amx_bf16`` and ``avx512_bf16`` (empty when it has none or on non-Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ()
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return tuple(u for u in ("amx_bf16", "avx512_bf16") if u in flags)


def _cpu_flags_known() -> bool:
    """Whether this machine's CPU flags can be read (Linux): elsewhere no bf16 unit is ever named."""
    return Path("/proc/cpuinfo").is_file()


def emulated_bf16(device: torch.device, precision: str) -> bool:
    """bf16 on a CPU whose flags are known and name no native bf16 unit: torch emulates it, slowly."""
    return device.type == "cpu" and precision == "bf16" and not cpu_bf16_units() and _cpu_flags_known()


@functools.cache
def _warn_emulated_bf16() -> None:  # once per process
    log.warning(
        "precision='bf16' on a CPU without native bf16 (neither avx512_bf16 nor amx_bf16 in /proc/cpuinfo): "
        "torch emulates it, over 20x slower than fp32 on an AVX2 CPU (benchmarks/results/bf16_emulated.md). "
        "Use --precision auto (fp32 on this CPU) unless the run must compute in bf16."
    )


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()


def device_problem(spec: str) -> str | None:
    """Why ``spec`` is not a device this machine has (None: it is)."""
    if spec in ("auto", "cpu"):
        return None
    if spec == "mps":
        return None if _mps_available() else "device='mps' but Apple MPS is not available here (use --device cpu)"
    if spec == "cuda" or spec.startswith("cuda:"):
        index = spec.partition(":")[2]
        if index and not index.isdigit():
            return f"device={spec!r} (a CUDA device is cuda or cuda:N with N a number)"
        if not torch.cuda.is_available():
            return f"device={spec!r} but CUDA is not available here (use --device cpu, or auto)"
        if index and int(index) >= torch.cuda.device_count():
            return f"device={spec!r} but this machine has {torch.cuda.device_count()} CUDA device(s)"
        return None
    return f"device={spec!r} (choose auto, cpu, cuda, cuda:N or mps)"


def _resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    return torch.device(spec)


def _native_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        return bool(cpu_bf16_units())
    return False


def precision_problem(spec: str, device: torch.device) -> str | None:
    """Why ``spec`` cannot run on ``device`` (None: it can)."""
    if spec not in PRECISION_CHOICES:
        return f"precision={spec!r} (choose one of {', '.join(PRECISION_CHOICES)})"
    if spec == "fp16" and device.type != "cuda":
        return f"precision='fp16' on {device.type}: fp16 needs a CUDA device (use --precision bf16 or fp32)"
    return None


def hardware_problems(device: str, precision: str) -> list[str]:
    """What is wrong with a device and precision on this machine (for settings' ``problems()``)."""
    problem = device_problem(device)
    if problem:
        return [problem]
    problem = precision_problem(precision, _resolve_device(device))
    return [problem] if problem else []


@dataclass(frozen=True)
class Hardware:
    """A resolved device and compute precision."""

    device: torch.device
    precision: str
    threads: int

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype (what autocast runs matmuls in, and what cached states are read as)."""
        return DTYPES[self.precision]

    def describe(self) -> str:
        """``cpu, bf16 (avx512_bf16), 2 threads`` or ``cuda:0, bf16``."""
        units = cpu_bf16_units()
        native = ""
        if self.device.type == "cpu" and self.precision == "bf16" and units:
            native = f" ({', '.join(units)})"
        elif emulated_bf16(self.device, self.precision):
            native = " (emulated: no native bf16 units)"
        threads = f", {self.threads} threads" if self.device.type == "cpu" else ""
        return f"{self.device}, {self.precision}{native}{threads}"


FP32_CPU = Hardware(torch.device("cpu"), "fp32", torch.get_num_threads())
"""The CPU in float32, as every path ran before devices and precisions were options."""


def resolve_hardware(device: str = "auto", precision: str = "auto") -> Hardware:
    """The device and precision a run uses; raises a ConfigError naming the value and the fix."""
    problem = device_problem(device)
    if problem:
        raise ConfigError(problem + ".")
    dev = _resolve_device(device)
    problem = precision_problem(precision, dev)
    if problem:
        raise ConfigError(problem + ".")
    if precision == "auto":
        forced = os.environ.get("EMBRECYCLE_PRECISION")
        if forced is not None and forced not in PRECISIONS:
            raise ConfigError(f"EMBRECYCLE_PRECISION={forced!r}: choose one of {', '.join(PRECISIONS)} or unset it.")
        precision = forced or ("bf16" if _native_bf16(dev) else "fp32")
        problem = precision_problem(precision, dev)
        if problem:
            raise ConfigError(problem + " (set by EMBRECYCLE_PRECISION).")
    if emulated_bf16(dev, precision):
        _warn_emulated_bf16()
    return Hardware(dev, precision, configure_threads())


def configure_threads() -> int:
    """Set torch's intra-op threads to the cores this process may use; returns that number."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    if torch.get_num_threads() != cores:
        torch.set_num_threads(cores)
    return cores


@contextlib.contextmanager
def autocast(hardware: Hardware) -> Iterator[None]:
    """Mixed precision for ``hardware`` (nothing for fp32)."""
    if hardware.precision == "fp32":
        yield
        return
    with torch.autocast(hardware.device.type, dtype=hardware.dtype):
        yield
