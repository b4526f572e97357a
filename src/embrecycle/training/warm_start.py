"""Warm-starting a run's trained weights from another run (``init_from``)."""

from __future__ import annotations

from ..cache.settings import CacheSettings
from ..errors import ConfigError
from ..model import FUSION_PREFIX, RecyclingModel
from ..run import read_weights
from ..run_record import read_run_record
from ..source_states import source_differences
from .config import TrainConfig

__all__ = ["warm_start"]


def warm_start(
    model: RecyclingModel, run_dir: str, config: TrainConfig, source: CacheSettings | None = None
) -> list[str]:
    """Load the weights this run trains from another run's ``model.safetensors``; returns their names.

    A cross-model consumer (``source``: its source cache's settings) takes the other run's fusion layer when
    that run read the same source states; from a plain run, its fusion layer starts as in a new run (the
    identity on the consumer's embeddings).

    Raises:
        ConfigError: the run is of another base model or task, has other labels, lacks a trained weight, or
            fused another source's states.
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
    fusion = {k for k in wanted if k.startswith(FUSION_PREFIX)}
    if fusion and not any(k.startswith(FUSION_PREFIX) for k in state):
        wanted = {k: v for k, v in wanted.items() if k not in fusion}  # a plain run: the fusion starts anew
    elif fusion and record.source is not None and source is not None:
        diff = source_differences(record.source["settings"], source.to_dict())
        if diff:
            raise ConfigError(
                f"init_from={run_dir!r} fused other source states than this run's --source-cache (this run vs "
                f"it: {'; '.join(diff)}): its fusion layer does not fit them. Warm-start from a run trained on the "
                "same source states, or from a plain run (the fusion layer then starts anew)."
            )
    missing = sorted(set(wanted) - set(state))
    if missing:
        raise ConfigError(
            f"init_from={run_dir!r} lacks {len(missing)} of the weights this run trains, e.g. {missing[:3]}: "
            "warm-start from a run that trained them (e.g. full fine-tuning, or the same cut and upper mode)."
        )
    model.load_trained_state({k: state[k] for k in wanted})
    return sorted(wanted)
