"""Step 3 of training: where every document's layer-k states come from.

Recycling builds (or extends) the cache for the train and dev documents, which runs
the lower layers once per new document, and takes what the build hands back: the
open cache, each document's entry and its tokenization. Training from text only
tokenizes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from ..cache.builder import BuildConfig, build_cache
from ..cache.location import default_cache_dir
from ..cache.settings import CacheSettings
from ..cache.store import Cache
from ..data.readers import Example
from ..encoder import LoadedEncoder
from ..source_states import SourceStates
from ..tokenization import Encoded, encode_documents, warn_truncated
from .config import TrainConfig
from .data import TrainingData

__all__ = ["TrainingInputs", "prepare_inputs"]

log = logging.getLogger(__name__)


@dataclass
class TrainingInputs:
    """Tokenized train/dev documents and, when recycling, their cache entries."""

    train: list[Encoded]
    dev: list[Encoded]
    cache: Cache | None = None
    train_index: Sequence[int | None] = ()
    dev_index: Sequence[int | None] = ()
    cache_seconds: float = 0.0
    source_train: SourceStates | None = None
    source_dev: SourceStates | None = None

    def truncated(self) -> tuple[int, int]:
        """How many train and dev documents were cut to ``max_length`` (computed now or read from the cache)."""
        return sum(e.truncated for e in self.train), sum(e.truncated for e in self.dev)


def prepare_inputs(
    config: TrainConfig,
    data: TrainingData,
    encoder: LoadedEncoder,
    build: BuildConfig,
    settings: CacheSettings,
    progress: bool,
    source: Cache | None = None,
) -> TrainingInputs:
    """The cache (built or extended) for a recycling mode, or plain tokenization for a mode that trains from text
    (with a cross-model consumer's ``source`` cache: plain tokenization and the source states).

    The truncated documents are warned about once per split, whether they were tokenized now or their states
    (and tokens) come from a cache built before (:meth:`TrainingInputs.truncated` counts them).
    """
    if source is not None:
        inputs = _from_source(source, data, encoder, settings, build)
    elif config.mode.from_text:
        inputs = _from_text(data, encoder, settings)
    else:
        inputs = _from_cache(config, data, encoder, build, settings, progress)
    for encoded, examples in ((inputs.train, data.train), (inputs.dev, data.dev)):
        warn_truncated(encoded, [e.doc for e in examples], settings.max_length, [e.source for e in examples])
    return inputs


def _from_text(data: TrainingData, encoder: LoadedEncoder, settings: CacheSettings) -> TrainingInputs:
    return TrainingInputs(
        train=_encode(encoder, data.train, settings),
        dev=_encode(encoder, data.dev, settings),
        train_index=[None] * len(data.train),
        dev_index=[None] * len(data.dev),
    )


def _from_source(
    cache: Cache, data: TrainingData, encoder: LoadedEncoder, settings: CacheSettings, build: BuildConfig
) -> TrainingInputs:
    """A cross-model consumer: its own tokens from text, the source model's states from the source cache (missing
    documents are computed by the source model and added)."""
    inputs = _from_text(data, encoder, settings)
    t0 = time.perf_counter()
    for split, examples, encoded in (("train", data.train, inputs.train), ("dev", data.dev, inputs.dev)):
        states = SourceStates(cache, [e.doc for e in examples], encoded, update=True, device=build.device)
        setattr(inputs, f"source_{split}", states)
    inputs.cache_seconds = time.perf_counter() - t0
    return inputs


def _from_cache(
    config: TrainConfig,
    data: TrainingData,
    encoder: LoadedEncoder,
    build: BuildConfig,
    settings: CacheSettings,
    progress: bool,
) -> TrainingInputs:
    examples = data.train + data.dev
    location = config.cache or str(default_cache_dir(settings))
    t0 = time.perf_counter()
    summary = build_cache(
        [e.doc for e in examples],
        location,
        build,
        encoder=encoder,
        sources=[e.source for e in examples],
        progress=progress,
        warn_truncated=False,  # counted below with the cached documents
    )
    seconds = time.perf_counter() - t0
    log.info("cache %s: %s", location, summary)
    cache = summary.opened
    assert cache is not None
    index = summary.indices()
    encoded: list[Encoded] = []
    for key, i in zip(summary.keys, index, strict=True):
        assert key is not None and i is not None  # read_data keeps only non-empty documents: all are cached
        encoded.append(summary.encoded.get(key) or cache.encoded(i))
    n = len(data.train)
    return TrainingInputs(encoded[:n], encoded[n:], cache, index[:n], index[n:], seconds)


def _encode(encoder: LoadedEncoder, examples: list[Example], settings: CacheSettings) -> list[Encoded]:
    docs, sources = [e.doc for e in examples], [e.source for e in examples]
    return encode_documents(encoder.tokenizer, docs, settings.max_length, settings.truncation, sources, warn=False)
