"""Step 2 of training: the task model, split at the cut, with the training mode applied."""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch

from ..cache.builder import BuildConfig, cache_settings_for
from ..cache.settings import CacheSettings
from ..cache.store import Cache
from ..dropout import use_fast_dropout
from ..encoder import LoadedEncoder, load_tokenizer
from ..errors import ConfigError
from ..hardware import Hardware, resolve_hardware
from ..model import RecyclingModel
from ..run import build_task_model
from ..source_states import open_source_cache
from ..tasks.base import Task
from .config import TrainConfig
from .warm_start import warm_start

__all__ = ["BuiltModel", "build_model", "seed_everything"]


@dataclass
class BuiltModel:
    """The model to train, its lower layers as an encoder (for the cache build), and the states' settings."""

    model: RecyclingModel
    encoder: LoadedEncoder
    build: BuildConfig
    settings: CacheSettings
    hardware: Hardware
    source: Cache | None = None
    """A cross-model consumer's source cache (opened once, here)."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model(config: TrainConfig, task: Task) -> BuiltModel:
    """Seed, load ``AutoModelFor*`` with a fresh head, split it at the mode's cut and apply the mode.

    With ``init_from`` the trained weights start from that run's. The cache settings are derived here,
    fingerprinting the pretrained lower layers before any of them trains; then the model moves to the device.
    """
    hardware = resolve_hardware(config.device, config.precision)
    seed_everything(config.seed)
    mode = config.mode
    layer = mode.layer_for(config.layer)
    task_model = build_task_model(config.model, config.task, task.labels, config.revision)
    model = RecyclingModel(task_model, task, layer, mode, config.upper_options)
    source = None
    if config.source_cache is not None:
        location = config.source_cache
        source = open_source_cache(
            location,
            "build the source model's states first, e.g. `embrecycle cache build --model SOURCE_MODEL --layer K "
            f"--data train.jsonl --out {location}`, then train with --source-cache.",
        )
        hidden = int(model.split.config.hidden_size)
        if config.fusion_size is not None and config.fusion_size != hidden:
            raise ConfigError(
                f"--fusion-size {config.fusion_size} differs from the consumer {config.model!r}'s hidden size "
                f"{hidden}: the fusion layer's output feeds the consumer's first layer, so it must be {hidden}. "
                "Drop --fusion-size (the default is the consumer's size)."
            )
        model.add_fusion(source.settings.hidden_size, config.fusion)
    if config.init_from:
        warm_start(model, config.init_from, config, source.settings if source is not None else None)
    tokenizer = load_tokenizer(config.model, model.split.config.model_type, config.revision)
    encoder = LoadedEncoder(config.model, config.revision, model.split, tokenizer)
    build = BuildConfig(
        model=config.model,
        layer=layer,
        max_length=config.max_length,
        truncation=config.truncation,
        dtype=config.cache_dtype,
        revision=config.revision,
        device=config.device,
        precision=hardware.precision,
    )
    settings = cache_settings_for(encoder, build, hardware.precision)
    use_fast_dropout(model)  # a third of torch's dropout cost on the CPU, torch's own elsewhere
    model.to(hardware.device)
    return BuiltModel(model, encoder, build, settings, hardware, source)
