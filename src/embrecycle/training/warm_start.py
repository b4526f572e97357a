"""Warm-starting a run's trained weights from another run (``init_from``)."""

from __future__ import annotations

from ..errors import ConfigError
from ..model import RecyclingModel
from ..run import read_weights
from ..run_record import read_run_record
from .config import TrainConfig

__all__ = ["warm_start"]


def warm_start(model: RecyclingModel, run_dir: str, config: TrainConfig) -> list[str]:
    """Load the weights this run trains from another run's ``model.safetensors``; returns their names.

    Raises:
        ConfigError: the run is of another base model or task, has other labels, or lacks a trained weight.
    """
    record = read_run_record(run_dir)
    problems = [
        f"{what} {theirs!r} (this run: {mine!r})"
        for what, theirs, mine in (
            ("base model", record.model, config.model),
            ("task", record.task, config.task),
            ("labels", list(record.labels), model.task.labels),
        )
        if theirs != mine
    ]
    if problems:
        raise ConfigError(
            f"init_from={run_dir!r} cannot start this run: it was trained with " + "; ".join(problems) + ". "
            "Warm-start only from a run of the same base model, task and label set."
        )
    state = read_weights(run_dir)
    wanted = model.trainable_state_dict()
    missing = sorted(set(wanted) - set(state))
    if missing:
        raise ConfigError(
            f"init_from={run_dir!r} lacks {len(missing)} of the weights this run trains, e.g. {missing[:3]}: "
            "warm-start from a run that trained them (e.g. full fine-tuning, or the same cut and upper mode)."
        )
    model.task_model.load_state_dict({k: state[k] for k in wanted}, strict=False)
    return sorted(wanted)
