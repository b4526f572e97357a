"""A cross-model run's second input: the source model's cached states, aligned onto the consumer's tokens.

Each document is looked up in the source cache by the source's own content key (the cache was built with the
source model and its tokenizer). Documents the cache lacks are computed by the source model's lower layers and
added (``update``), or refused with the command that adds them. The alignment of each document's source
tokens onto its consumer tokens is computed once (:mod:`embrecycle.align`); a batch then reads the source
states and averages them onto the consumer's tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from .align import Alignment, align, aligned_states
from .cache.builder import BuildConfig, build_cache
from .cache.location import is_remote, local_path
from .cache.settings import KEY_FIELDS
from .cache.store import Cache, Document
from .encoder import LoadedEncoder
from .errors import CacheMismatchError, CacheMissError, ConfigError
from .tokenization import Encoded

__all__ = ["SourceStates", "check_source", "open_source_cache", "source_differences", "source_record"]


def open_source_cache(location: str, fix: str) -> Cache:
    """A cross-model run's source cache, which must exist (it says which model made the states).

    Raises:
        FileNotFoundError: no cache at ``location``, with ``fix`` (what to do about it) in the message.
    """
    try:
        return Cache.open(location)
    except FileNotFoundError:
        raise FileNotFoundError(f"no source cache at {location}: {fix}") from None


def source_record(cache: Cache, fusion: str) -> dict[str, Any]:
    """What a cross-model run records about its source (``RunRecord.source``)."""
    return {
        "settings": cache.settings.to_dict(),
        "fingerprint": cache.settings.fingerprint(),
        "location": cache.location if is_remote(cache.location) else str(local_path(cache.location).resolve()),
        "fusion": fusion,
    }


def source_differences(recorded: dict[str, Any], settings: dict[str, Any]) -> list[str]:
    """The settings that make two source caches hold other states: what the keys depend on, the storage dtype
    aside (a converted cache holds the same states) and the model's name aside (its weights' fingerprint counts).
    Empty when the states are the same."""
    keys = [k for k in KEY_FIELDS if k != "dtype"]
    return [f"{k}: {settings.get(k)!r} vs {recorded.get(k)!r}" for k in keys if recorded.get(k) != settings.get(k)]


def check_source(cache: Cache, recorded: dict[str, Any], run: str) -> None:
    """Refuse a source cache whose states differ from the ones the run was trained on (the storage dtype aside).

    Raises:
        CacheMismatchError: naming the settings that differ.
    """
    diff = source_differences(recorded["settings"], cache.settings.to_dict())
    if diff:
        raise CacheMismatchError(
            f"the source cache {cache.location} holds other states than the run {run} was trained on (cache vs "
            "run: "
            + "; ".join(diff)
            + "). Give the run's source cache (its location is in run.json, 'source'), or a cache built with the "
            "same source model, layer and tokenizer."
        )


class SourceStates:
    """The source states of a fixed list of documents, ready to batch onto their consumer tokenizations.

    Args:
        cache: The source cache.
        docs: The documents (texts, or word lists for NER), in the order of ``consumer``.
        consumer: The consumer's tokenization of each document.
        update: Compute the documents the cache lacks with the source model and add them; otherwise they are
            an error.
        device: Where the source model runs for missing documents (in the precision the cache's states were
            computed in, so that new states match the cached ones).
        encoder: Gives the loaded source model, split at the cache's layer, when documents are missing (default:
            load it from the cache's settings for this call).
    """

    def __init__(
        self,
        cache: Cache,
        docs: Sequence[Document],
        consumer: Sequence[Encoded],
        update: bool,
        device: str = "cpu",
        encoder: Callable[[], LoadedEncoder] | None = None,
    ) -> None:
        self.cache = cache
        keys = [cache.key(d) for d in docs]
        index = [cache.index_of(k) for k in keys]
        missing = [d for d, i in zip(docs, index, strict=True) if i is None]
        self.cached = [i is not None for i in index]  # per document, before missing ones were added
        self.hits, self.added = sum(self.cached), 0
        if missing:
            s = cache.settings
            if not update:
                revision = f" --revision {s.model_revision}" if s.model_revision else ""
                truncation = f" --truncation {s.truncation}" if s.truncation != "truncate" else ""
                raise CacheMissError(
                    f"{len(missing)} of {len(docs)} documents are not in the source cache {cache.location} (the "
                    f"first: {str(missing[0])[:80]!r}). Pass --update-cache (update_cache=True in Python; not "
                    f"with --engine ray) to compute them with the source model ({s.model}), or add them first "
                    f"with `embrecycle cache build --model {s.model}{revision} --layer {s.layer} --max-length "
                    f"{s.max_length}{truncation} --dtype {s.dtype} --precision {s.precision} --data FILE --out "
                    f"{cache.location}`."
                )
            build = BuildConfig(
                model=s.model, layer=s.layer, max_length=s.max_length, truncation=s.truncation, dtype=s.dtype,
                revision=s.model_revision, device=device, precision=s.precision,
            )  # fmt: skip
            try:
                self.added = build_cache(
                    list(missing),
                    cache.location,
                    build,
                    encoder=encoder() if encoder is not None else None,
                    progress=False,
                    warn_truncated=False,
                ).computed
            except ConfigError as e:
                if s.precision != "fp16":
                    raise
                raise ConfigError(
                    f"{len(missing)} documents are not in the source cache {cache.location}, and its states were "
                    f"computed in fp16, which runs only on CUDA (here: device {device!r}): compute them on a CUDA "
                    "--device, or rebuild the source cache with --precision bf16 or fp32 (and train on it)."
                ) from e
            cache.refresh()
            index = [cache.index_of(k) for k in keys]
        self.index = [int(i) for i in index if i is not None]
        self.alignments: list[Alignment] = [
            align(c, cache.encoded(i), words=not isinstance(d, str))
            for d, c, i in zip(docs, consumer, self.index, strict=True)
        ]

    def batch(self, rows: Sequence[int], consumer_len: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """``(len(rows), consumer_len, source_hidden)``: the source states of documents ``rows``, aligned."""
        b = self.cache.read_batch([self.index[r] for r in rows], dtype=dtype)
        return aligned_states([self.alignments[r] for r in rows], b.hidden.to(device), consumer_len)
