"""Prediction with recycling: cached documents skip the lower layers, only misses run them."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch

from .cache.builder import BuildConfig, build_cache
from .cache.store import Cache, Document
from .data.readers import Example, read_examples
from .encoder import LoadedEncoder, load_encoder
from .errors import CacheMissError, InputDataError
from .hardware import FP32_CPU, Hardware, resolve_hardware
from .inference import shared_document_logits
from .model import RecyclingModel
from .run import load_run
from .run_record import RunRecord
from .source_states import SourceStates, check_source, open_source_cache
from .tasks.ner import words_of
from .tokenization import Encoded, encode_documents, is_empty, warn_truncated

__all__ = ["Predictions", "TaskModel", "load", "predict_shared"]


@dataclass
class Predictions:
    """Predictions in input order, with how many documents came from the cache.

    Each item is ``{"label", "probabilities"}`` (classification) or
    ``{"words", "tags", "entities"}`` (NER); ``None`` for an empty document. ``cached`` says per document
    whether its states were read from the cache, ``truncated`` whether it was cut to the run's max length
    (``None`` for an empty document, in both).
    """

    items: list[dict[str, Any] | None]
    cached: list[bool | None] = field(default_factory=list)
    truncated: list[bool | None] = field(default_factory=list)
    hits: int = 0
    misses: int = 0
    added_to_cache: int = 0
    skipped_empty: int = 0
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[dict[str, Any] | None]:
        return iter(self.items)

    def __getitem__(self, i: int) -> dict[str, Any] | None:
        return self.items[i]


class TaskModel:
    """A trained run, ready to predict. Create with :func:`load`."""

    def __init__(
        self, run_dir: Path, model: RecyclingModel, tokenizer: Any, record: RunRecord, hardware: Hardware = FP32_CPU
    ) -> None:
        self.run_dir = run_dir
        self.model = model.to(hardware.device)
        self.tokenizer = tokenizer
        self.record = record
        self.task = model.task
        self.hardware = hardware
        self._source_encoder: LoadedEncoder | None = None

    def source_encoder(self, source: Cache) -> LoadedEncoder:
        """A cross-model run's source model, split at its cache's layer: loaded on first use, then kept (documents
        missing from the source cache run its lower layers; a server must not reload it per request)."""
        s = source.settings
        kept = self._source_encoder
        if kept is None or (kept.model_name, kept.layer) != (s.model, s.layer):
            kept = self._source_encoder = load_encoder(s.model, s.layer, s.model_revision)
        return kept

    @property
    def labels(self) -> list[str]:
        return self.task.labels

    def open_cache(self, cache: str | os.PathLike[str] | Cache | None) -> Cache | None:
        """The given cache (checked against the run), the run's own training cache, or None.

        For a cross-model run: its source cache (the given one, else the one it was trained with), checked
        against the source states it was trained on.
        """
        if self.record.source is not None:
            return self._source_cache(cache)
        if self.record.training_mode.from_text:
            return None  # a baseline trained from text: no cache of its settings exists
        if isinstance(cache, Cache):
            c = cache
        else:
            path = cache or self.record.cache
            if not path:
                return None
            try:
                c = Cache.open(path)
            except FileNotFoundError:
                if cache:
                    raise FileNotFoundError(f"no cache at {cache}") from None
                return None  # the run's training cache was deleted: compute everything
        c.settings.check_matches(self.record.expected_states(c.settings.dtype), c.location)
        return c

    def _source_cache(self, cache: str | os.PathLike[str] | Cache | None) -> Cache:
        recorded = self.record.source
        assert recorded is not None
        if isinstance(cache, Cache):
            source = cache
        else:
            location = os.fspath(cache) if cache else str(recorded["location"])
            source = open_source_cache(
                location,
                f"pass the run's source cache with --cache (the cross-model run {self.run_dir} reads the source "
                "model's states from it).",
            )
        check_source(source, recorded, str(self.run_dir))
        return source

    def predict(
        self,
        docs: Sequence[Document],
        cache: str | os.PathLike[str] | Cache | None = None,
        update_cache: bool = False,
        batch_size: int = 64,
    ) -> Predictions:
        """Predict every document; cached ones read their layer-k states.

        Args:
            docs: Texts (for NER, split on whitespace into words) or word lists.
            cache: A cache of this run's base model and layer; default: the run's training cache.
            update_cache: Store the states of documents that missed the cache.
            batch_size: Documents per forward pass.
        """
        return predict_shared([self], docs, cache, update_cache, batch_size)[0]

    def read(
        self,
        path: str | os.PathLike[str],
        fmt: str | None = None,
        text_field: str = "text",
        label_field: str | None = "label",
    ) -> list[Example]:
        """Examples of a file, read as this run's task expects."""
        examples = read_examples(path, fmt, text_field=text_field, label_field=label_field)
        self.task.check_input(examples, path)
        return examples

    def evaluate(
        self,
        examples: Sequence[Example],
        cache: str | os.PathLike[str] | Cache | None = None,
        update_cache: bool = False,
    ) -> dict[str, Any]:
        """Task metrics on labelled examples (unknown labels are an error naming them); ``cache`` and
        ``update_cache`` as in :meth:`predict`."""
        examples = [e for e in examples if not is_empty(e.doc)]
        if not examples:
            raise InputDataError("no labelled, non-empty examples to evaluate.")
        self.task.check_labels(examples, "evaluation")
        preds = self.predict([e.doc for e in examples], cache=cache, update_cache=update_cache)
        items = cast(list[dict[str, Any]], preds.items)  # no None: empty documents were dropped above
        scores = self.task.metrics([self.task.gold(e) for e in examples], [self.task.predicted(p) for p in items])
        return {**scores, "documents": len(examples), "cache_hits": preds.hits, "cache_misses": preds.misses}


def predict_shared(
    models: Sequence[TaskModel],
    docs: Sequence[Document],
    cache: str | os.PathLike[str] | Cache | None = None,
    update_cache: bool = False,
    batch_size: int = 64,
    max_batch_tokens: int | None = None,
) -> list[Predictions]:
    """Predictions of several runs of one input kind (texts or word lists) that share their lower layers.

    Each document's layer-k states are read from the cache (or computed by the
    lower layers, once) and every run's upper layers and head run on them.
    Cached documents are not tokenized again: the cache holds their tokens. A forward pass holds at most
    ``batch_size`` documents and, with ``max_batch_tokens``, at most that many padded tokens.
    """
    first = models[0]
    if first.task.name == "ner":
        docs = [words_of(d) for d in docs]
    if first.model.fusion is not None:
        source = first.open_cache(cache)
        assert source is not None
        for m in models[1:]:
            m.open_cache(source)  # checks the source cache against every run
        return _predict_cross(models, docs, source, update_cache, batch_size, max_batch_tokens)
    c = first.open_cache(cache)
    for m in models[1:]:
        if c is not None:
            m.open_cache(c)  # checks the cache against every run
    keep = [i for i, d in enumerate(docs) if not is_empty(d)]
    live = [docs[i] for i in keep]
    index = [c.index_of(c.key(d)) if c is not None else None for d in live]
    hits = sum(i is not None for i in index)
    was_cached = [i is not None for i in index]  # before --update-cache adds the misses
    added = 0
    if c is not None and update_cache and hits < len(live):
        states = first.record.states
        cfg = BuildConfig(
            model=states.model,
            layer=states.layer,
            max_length=states.max_length,
            truncation=states.truncation,
            dtype=c.settings.dtype,
            revision=states.model_revision,
            device=str(first.hardware.device),
            precision=c.settings.precision,  # new states must be computed as the cached ones were
        )
        encoder = LoadedEncoder(states.model, states.model_revision, first.model.split, first.tokenizer)
        misses = [d for d, i in zip(live, index, strict=True) if i is None]
        added = build_cache(misses, c.location, cfg, encoder=encoder, progress=False, warn_truncated=False).computed
        c.refresh()
        index = [c.index_of(c.key(d)) for d in live]
    encoded: list[Encoded | None] = [None] * len(live)
    if c is not None:
        for j, i in enumerate(index):
            if i is not None:
                try:
                    encoded[j] = c.encoded(i)
                except CacheMissError:  # removed (`cache remove`) after this process opened the cache: a miss
                    index[j], was_cached[j] = None, False
    todo = [j for j, e in enumerate(encoded) if e is None]
    states = first.record.states
    fresh = encode_documents(first.tokenizer, [live[j] for j in todo], states.max_length, states.truncation, warn=False)
    for j, e in zip(todo, fresh, strict=True):
        encoded[j] = e
    pad_id = first.tokenizer.pad_token_id or 0
    filled = cast(list[Encoded], encoded)  # every slot is set now: read from the cache or just tokenized
    warn_truncated(filled, live, states.max_length)  # cached documents count as much as fresh ones
    logits = shared_document_logits(
        [m.model for m in models], filled, c, index, pad_id, batch_size, first.hardware, max_batch_tokens
    )
    return _filled(models, len(docs), keep, live, filled, was_cached, logits, added)


def _predict_cross(
    models: Sequence[TaskModel],
    docs: Sequence[Document],
    source: Cache,
    update_cache: bool,
    batch_size: int,
    max_batch_tokens: int | None,
) -> list[Predictions]:
    """Cross-model runs (one consumer and source): the consumer's tokens from text, the source states from the
    source cache; documents it lacks run the source model (``update_cache``) or are an error."""
    first = models[0]
    keep = [i for i, d in enumerate(docs) if not is_empty(d)]
    live = [docs[i] for i in keep]
    states = first.record.states
    encoded = encode_documents(first.tokenizer, live, states.max_length, states.truncation, warn=False)
    warn_truncated(encoded, live, states.max_length)
    feed = SourceStates(
        source, live, encoded, update_cache, str(first.hardware.device), lambda: first.source_encoder(source)
    )  # raises CacheMissError naming --update-cache for documents the source cache lacks
    pad_id = first.tokenizer.pad_token_id or 0
    logits = shared_document_logits(
        [m.model for m in models], encoded, None, [None] * len(live), pad_id, batch_size, first.hardware,
        max_batch_tokens, feed,
    )  # fmt: skip
    note = f"cross-model run: the source states come from {source.location}"
    return _filled(models, len(docs), keep, live, encoded, feed.cached, logits, feed.added, note)


def _filled(
    models: Sequence[TaskModel],
    n_docs: int,
    keep: Sequence[int],
    live: Sequence[Document],
    encoded: Sequence[Encoded],
    cached: Sequence[bool],
    logits: Sequence[Sequence[torch.Tensor]],
    added: int,
    note: str | None = None,
) -> list[Predictions]:
    """Each run's predictions of ``n_docs`` documents: the non-empty ones (at positions ``keep``) decoded from
    their logits, the empty ones left ``None``; per document whether it was cached and truncated."""
    results = []
    hits = sum(cached)
    for m, task_logits in zip(models, logits, strict=True):
        result = Predictions(items=[None] * n_docs)
        result.hits, result.misses, result.added_to_cache = hits, len(live) - hits, added
        result.skipped_empty = n_docs - len(keep)
        result.cached, result.truncated = [None] * n_docs, [None] * n_docs
        if note:
            result.notes.append(note)
        if m.record.training_mode.from_text:
            result.notes.append(f"{m.record.method} baseline run: every document runs all layers from its text")
        for i, hit, enc, lg, doc in zip(keep, cached, encoded, task_logits, live, strict=True):
            result.cached[i], result.truncated[i] = hit, enc.truncated
            result.items[i] = m.task.decode(lg, enc, doc)
        results.append(result)
    return results


def load(
    run_dir: str | os.PathLike[str], device: str = "auto", precision: str = "auto", merge_lora: bool = True
) -> TaskModel:
    """Load a trained run directory for prediction on ``device`` in ``precision`` (see :mod:`embrecycle.hardware`).

    A LoRA run's updates are merged into the weights they adapt (``merge_lora``, the default): the same
    function without LoRA's extra matmuls, which made a LoRA run predict about 1.4x slower than the same
    model merged. ``merge_lora=False`` keeps them apart (a :class:`~embrecycle.TaskSet` can then hold one copy
    of the frozen upper layers for all its LoRA runs).

    Example:
        >>> model = load("runs/scicite")          # doctest: +SKIP
        >>> model.predict(["We follow the method of ..."])[0]["label"]  # doctest: +SKIP
        'method'
    """
    hardware = resolve_hardware(device, precision)
    model, tokenizer, record = load_run(run_dir)  # an unknown task fails there, naming the known ones
    if merge_lora:
        model.merge_lora()
    return TaskModel(Path(run_dir), model, tokenizer, record, hardware)
