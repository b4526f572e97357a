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
from ..tokenization import Encoded, encode_documents
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


def prepare_inputs(
    config: TrainConfig,
    data: TrainingData,
    encoder: LoadedEncoder,
    build: BuildConfig,
    settings: CacheSettings,
    progress: bool,
) -> TrainingInputs:
    """The cache (built or extended) for a recycling mode, or plain tokenization for a mode that trains from text."""
    if config.mode.from_text:
        return TrainingInputs(
            train=_encode(encoder, data.train, settings, with_sources=True),
            dev=_encode(encoder, data.dev, settings, with_sources=False),
            train_index=[None] * len(data.train),
            dev_index=[None] * len(data.dev),
        )
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


def _encode(
    encoder: LoadedEncoder, examples: list[Example], settings: CacheSettings, with_sources: bool
) -> list[Encoded]:
    sources = [e.source for e in examples] if with_sources else None
    return encode_documents(
        encoder.tokenizer, [e.doc for e in examples], settings.max_length, settings.truncation, sources
    )
