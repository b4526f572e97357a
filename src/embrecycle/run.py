"""Run directories: what a training run writes, and loading it back (no pickle: JSON + safetensors)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers.utils import logging as hf_logging

from ._version import __version__
from .cache.settings import CacheSettings
from .encoder import _attn_kwargs, load_config, load_tokenizer, module_fingerprint
from .errors import CacheMismatchError, ConfigError
from .families import get_family
from .model import RecyclingModel
from .tasks import get_task

RUN_FILE = "run.json"
WEIGHTS_FILE = "model.safetensors"
RUN_FORMAT_VERSION = 1


def write_run_metadata(out: Path, meta: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    data = {"format": "embrecycle-run", "format_version": RUN_FORMAT_VERSION, "embrecycle_version": __version__, **meta}
    (out / RUN_FILE).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    labels = {"id2label": dict(enumerate(meta["labels"])), "label2id": {v: i for i, v in enumerate(meta["labels"])}}
    (out / "labels.json").write_text(json.dumps(labels, indent=2) + "\n", encoding="utf-8")


def save_weights(model: RecyclingModel, out: Path) -> None:
    save_file(model.trainable_state_dict(), str(out / WEIGHTS_FILE), metadata={"embrecycle": __version__})


def read_run_metadata(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / RUN_FILE
    if not path.exists():
        raise FileNotFoundError(f"{run_dir} is not a run directory: {RUN_FILE} is missing (train one first).")
    meta = json.loads(path.read_text(encoding="utf-8"))
    if meta.get("format") != "embrecycle-run" or meta.get("format_version") != RUN_FORMAT_VERSION:
        raise ConfigError(f"{path} is not an embrecycle run of format version {RUN_FORMAT_VERSION}.")
    return meta


def build_task_model(model: str, task_name: str, labels: list[str], revision: str | None = None) -> torch.nn.Module:
    """``AutoModelFor{Sequence,Token}Classification`` from a base checkpoint, with a fresh head."""
    config = load_config(model, revision)
    get_family(config.model_type)
    task_cls = get_task(task_name)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "head newly initialised" report is expected here
    try:
        return task_cls.auto_class.from_pretrained(  # type: ignore[no-any-return]
            model,
            revision=revision,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)},
            **_attn_kwargs(config.model_type, None),
        )
    finally:
        hf_logging.set_verbosity(verbosity)


def load_run(run_dir: str | Path) -> tuple[RecyclingModel, Any, dict[str, Any]]:
    """``(model, tokenizer, metadata)`` of a run directory, in eval mode.

    Raises:
        CacheMismatchError: the base model's weights are not the ones the run was trained on.
    """
    meta = read_run_metadata(run_dir)
    task = get_task(meta["task"])(meta["labels"])
    task_model = build_task_model(meta["model"], meta["task"], meta["labels"], meta.get("revision"))
    upper = "all" if meta["method"] == "full-finetune" else meta["upper"]
    model = RecyclingModel(task_model, task, meta["layer"], upper, meta.get("upper_options"))
    found = module_fingerprint(model.split.lower_modules())
    if found != meta["lower_fingerprint"]:
        raise CacheMismatchError(
            f"the base model {meta['model']!r} has lower-layer weights {found[:16]}, but the run in {run_dir} was "
            f"trained on {meta['lower_fingerprint'][:16]}. Point the run's 'model' in {RUN_FILE} to the original "
            "base model."
        )
    if meta.get("upper_fingerprint") and model.upper_fingerprint != meta["upper_fingerprint"]:
        raise CacheMismatchError(
            f"the base model {meta['model']!r} has upper-layer weights {str(model.upper_fingerprint)[:16]}, but the "
            f"{upper} run in {run_dir} was trained over {meta['upper_fingerprint'][:16]} (its upper layers are not "
            f"stored in the run). Point the run's 'model' in {RUN_FILE} to the original base model."
        )
    state = load_file(str(Path(run_dir) / WEIGHTS_FILE))
    own = task_model.state_dict()
    unknown = sorted(set(state) - set(own))
    if unknown:
        raise ConfigError(f"{run_dir}/{WEIGHTS_FILE} holds weights this model does not have: {unknown[:5]}")
    missing = sorted(set(model.trainable_state_dict()) - set(state))
    if missing:
        raise ConfigError(
            f"{run_dir}/{WEIGHTS_FILE} lacks {len(missing)} trained weights, e.g. {missing[:3]}: the run is incomplete "
            "or was written by another version; train it again."
        )
    task_model.load_state_dict(state, strict=False)
    model.eval()
    tokenizer = load_tokenizer(meta["model"], model.split.config.model_type, meta.get("revision"))
    return model, tokenizer, meta


def expected_cache_settings(meta: dict[str, Any], dtype: str) -> CacheSettings:
    """The cache settings a run's states must come from (any storage dtype)."""
    return CacheSettings(
        model=meta["model"],
        model_revision=meta.get("revision"),
        model_type=meta["model_type"],
        lower_fingerprint=meta["lower_fingerprint"],
        layer=meta["layer"],
        num_layers=meta["num_layers"],
        hidden_size=meta["hidden_size"],
        tokenizer=meta["model"],
        tokenizer_fingerprint=meta["tokenizer_fingerprint"],
        max_length=meta["max_length"],
        truncation=meta["truncation"],
        dtype=dtype,
    )


def settings_meta(settings: CacheSettings) -> dict[str, Any]:
    s = asdict(settings)
    return {
        k: s[k]
        for k in (
            "model_type",
            "lower_fingerprint",
            "layer",
            "num_layers",
            "hidden_size",
            "tokenizer_fingerprint",
            "max_length",
            "truncation",
        )
    }
