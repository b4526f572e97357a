"""What ``train --resume`` continues from: one safetensors file, written atomically at every evaluation.

It holds the trained weights as they are at that step (not only the best ones), the optimiser's
state, the schedule, the random number generators and where the loop stood (epoch, batch within
the epoch, history, best point), so that a resumed run ends with the same weights as one that was
never interrupted. Tensors are stored as tensors and everything else as JSON in the file's
metadata: nothing in it is executed when it is read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from ..errors import RunCorruptedError
from ..files import atomic_write
from ..model import RecyclingModel

__all__ = ["ResumeState", "load_resume_state", "save_resume_state"]

_KEY = "embrecycle_resume"
_FORMAT_VERSION = 1


@dataclass
class ResumeState:
    """Where an interrupted loop stood, and what it needs to continue bit for bit."""

    progress: dict[str, Any]
    """epoch, batch (within the epoch), step, bad_evals and the FitResult fields so far."""
    weights: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    rng: dict[str, Any]


def _rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    return tensors, {"numpy": [kind, int(pos), int(has_gauss), float(cached)]}


def _set_rng_state(tensors: dict[str, torch.Tensor], header: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = sorted(k for k in tensors if k.startswith("rng.cuda."))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])
    kind, pos, has_gauss, cached = header["numpy"]
    np.random.set_state((kind, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))


def save_resume_state(
    path: Path,
    model: RecyclingModel,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    progress: dict[str, Any],
    train_config: dict[str, Any],
) -> None:
    """Write the loop's state to ``path`` (atomically: a kill leaves the previous state)."""
    tensors: dict[str, torch.Tensor] = {f"weight.{k}": v.cpu() for k, v in model.trainable_state_dict().items()}
    opt = optimizer.state_dict()
    slots: dict[str, list[str]] = {}
    for idx, state in opt["state"].items():
        for name, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{name}"] = value.detach().cpu().contiguous()
                slots.setdefault(str(idx), []).append(name)
    rng_tensors, rng_meta = _rng_state()
    tensors.update(rng_tensors)
    header = {
        "format_version": _FORMAT_VERSION,
        "progress": progress,
        "param_groups": opt["param_groups"],
        "slots": slots,
        "scheduler": scheduler.state_dict(),
        "rng": rng_meta,
        "train_config": train_config,
    }
    blob = json.dumps(header)
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={_KEY: blob}))


def load_resume_state(path: Path) -> tuple[ResumeState, dict[str, Any]]:
    """The state in ``path`` and the training settings it was written under.

    Raises:
        RunCorruptedError: the file is truncated or damaged (resume is then impossible: start over).
    """
    try:
        with safe_open(str(path), framework="pt") as f:
            header = json.loads((f.metadata() or {})[_KEY])
        tensors = load_file(str(path))
    except (SafetensorError, OSError, KeyError, ValueError) as e:
        raise RunCorruptedError(
            f"the resume state {path} is damaged ({e}); it cannot be resumed: start over with --overwrite."
        ) from e
    if header.get("format_version") != _FORMAT_VERSION:
        raise RunCorruptedError(
            f"{path} has resume format {header.get('format_version')!r}; start over with --overwrite."
        )
    state: dict[int, dict[str, Any]] = {}
    for idx, names in header["slots"].items():
        state[int(idx)] = {name: tensors[f"optim.{idx}.{name}"] for name in names}
    weights = {k[len("weight.") :]: v for k, v in tensors.items() if k.startswith("weight.")}
    rng = {"tensors": {k: v for k, v in tensors.items() if k.startswith("rng.")}, "header": header["rng"]}
    resumed = ResumeState(
        progress=header["progress"],
        weights=weights,
        optimizer={"state": state, "param_groups": header["param_groups"]},
        scheduler=header["scheduler"],
        rng=rng,
    )
    return resumed, header["train_config"]


def restore(state: ResumeState, model: RecyclingModel, optimizer: torch.optim.Optimizer, scheduler: Any) -> None:
    """Put the weights, optimiser, schedule and random generators back as they were when ``state`` was saved."""
    model.load_trained_state(state.weights)
    optimizer.load_state_dict(state.optimizer)
    scheduler.load_state_dict(state.scheduler)
    _set_rng_state(state.rng["tensors"], state.rng["header"])
