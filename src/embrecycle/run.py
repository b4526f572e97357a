"""Run directories: what a training run writes, and loading it back (no pickle: JSON + safetensors)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel
from transformers.utils import logging as hf_logging

from ._version import __version__
from .encoder import (
    attn_kwargs,
    damaged_weights_error,
    load_config,
    load_tokenizer,
    module_fingerprint,
    pickle_only_message,
)
from .errors import CacheMismatchError, ConfigError, ModelLoadError, RunCorruptedError
from .families import get_family
from .files import atomic_write
from .model import FUSION_PREFIX, RecyclingModel
from .run_record import RUN_FILE, RunRecord, read_run_record
from .tasks import get_task

__all__ = ["WEIGHTS_FILE", "build_task_model", "load_run", "read_weights", "save_weights"]

WEIGHTS_FILE = "model.safetensors"


def save_weights(model: RecyclingModel, out: Path) -> None:
    """Write the model's trained weights to ``out/model.safetensors`` (atomically)."""
    state = model.trainable_state_dict()
    atomic_write(out / WEIGHTS_FILE, lambda tmp: save_file(state, str(tmp), metadata={"embrecycle": __version__}))


def read_weights(run_dir: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The trained weights of a run (``model.safetensors``; no pickle is ever read).

    Raises:
        RunCorruptedError: the file is missing, truncated or damaged.
    """
    path = Path(run_dir) / WEIGHTS_FILE
    if not path.is_file():
        raise RunCorruptedError(
            f"{path} is missing: the run in {run_dir} is damaged. Train it again (--overwrite replaces it)."
        )
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise RunCorruptedError(
            f"{path} is truncated or damaged ({e}): the run in {run_dir} cannot be loaded. Train it again "
            "(--overwrite replaces it)."
        ) from e


def build_task_model(model: str, task_name: str, labels: list[str], revision: str | None = None) -> PreTrainedModel:
    """``AutoModelFor{Sequence,Token}Classification`` from a base checkpoint, with a fresh head."""
    config = load_config(model, revision)
    get_family(config.model_type)
    task_cls = get_task(task_name)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "head newly initialised" report is expected here
    try:
        return task_cls.auto_class.from_pretrained(
            model,
            revision=revision,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)},
            **attn_kwargs(config.model_type, None),
        )
    except pickle.UnpicklingError as e:  # a hub model with pickle weights only: refused, never executed
        raise ModelLoadError(pickle_only_message(model, ["pytorch_model.bin"]) + f" ({e})") from e
    except SafetensorError as e:  # a truncated or damaged base model: name the file, not a traceback
        raise damaged_weights_error(model, e) from e
    finally:
        hf_logging.set_verbosity(verbosity)


def load_run(run_dir: str | os.PathLike[str]) -> tuple[RecyclingModel, Any, RunRecord]:
    """``(model, tokenizer, record)`` of a run directory, in eval mode.

    Raises:
        CacheMismatchError: the base model's weights are not the ones the run was trained on.
    """
    record = read_run_record(run_dir)
    task = get_task(record.task)(list(record.labels))
    task_model = build_task_model(record.model, record.task, list(record.labels), record.revision)
    model = RecyclingModel(task_model, task, record.layer, record.training_mode, record.upper_options)
    if record.source is not None:
        model.add_fusion(int(record.source["settings"]["hidden_size"]), str(record.source["fusion"]))
    found = module_fingerprint(model.split.lower_modules())
    if found != record.states.lower_fingerprint:
        raise CacheMismatchError(
            f"the base model {record.model!r} has lower-layer weights {found[:16]}, but the run in {run_dir} was "
            f"trained on {record.states.lower_fingerprint[:16]}. Point the run's model in {RUN_FILE} "
            "('states.model') to the original base model."
        )
    if record.upper_fingerprint and model.upper_fingerprint != record.upper_fingerprint:
        raise CacheMismatchError(
            f"the base model {record.model!r} has upper-layer weights {str(model.upper_fingerprint)[:16]}, but the "
            f"{record.mode} run in {run_dir} was trained over {record.upper_fingerprint[:16]} (its upper layers are "
            f"not stored in the run). Point the run's model in {RUN_FILE} ('states.model') to the original base model."
        )
    state = read_weights(run_dir)
    trained = set(model.trainable_state_dict())
    own = set(task_model.state_dict()) | {k for k in trained if k.startswith(FUSION_PREFIX)}
    unknown = sorted(set(state) - own)
    if unknown:
        raise ConfigError(f"{run_dir}/{WEIGHTS_FILE} holds weights this model does not have: {unknown[:5]}")
    missing = sorted(trained - set(state))
    if missing:
        raise ConfigError(
            f"{run_dir}/{WEIGHTS_FILE} lacks {len(missing)} trained weights, e.g. {missing[:3]}: the run is incomplete "
            "or was written by another version; train it again."
        )
    model.load_trained_state(state)
    model.eval()
    tokenizer = load_tokenizer(record.model, model.split.config.model_type, record.revision)
    return model, tokenizer, record
