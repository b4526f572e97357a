"""Batched forward passes over documents: cached states where available, the lower layers otherwise."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import numpy as np
import torch

from .batching import eval_batches
from .cache.store import Cache
from .hardware import FP32_CPU, Hardware, autocast
from .model import RecyclingModel
from .source_states import SourceStates
from .tokenization import Encoded, pad_ids


@torch.inference_mode()
def shared_document_logits(
    models: Sequence[RecyclingModel],
    encoded: Sequence[Encoded],
    cache: Cache | None,
    cache_index: Sequence[int | None],
    pad_id: int,
    batch_size: int = 64,
    hardware: Hardware | None = None,
    max_batch_tokens: int | None = None,
    source: SourceStates | None = None,
) -> list[list[torch.Tensor]]:
    """Every model's logits for every document, unpadded, float32 on the CPU: ``(classes,)`` or
    ``(n_tokens, classes)`` each.

    The layer-k states of each batch are obtained once (read from the cache, or
    the first model's lower layers for documents the cache lacks) and every
    model runs its upper layers and head on them, so the models must share the
    lower layers (same base weights and cut). A batch holds at most ``batch_size`` documents and, with
    ``max_batch_tokens``, at most that many padded tokens. They run on ``hardware`` (default: the CPU in
    fp32), where the models must already be; cached states are read straight into its compute dtype.
    """
    hw = hardware or FP32_CPU
    for m in models:
        m.eval()
    lower = models[0].split
    out: list[list[torch.Tensor | None]] = [[None] * len(encoded) for _ in models]
    lengths = np.array([len(e.input_ids) for e in encoded])
    for batch in eval_batches(lengths, batch_size, max_batch_tokens):
        hits = [int(i) for i in batch if cache_index[i] is not None]
        misses = [int(i) for i in batch if cache_index[i] is None]
        if hits:
            assert cache is not None
            b = cache.read_batch([r for i in hits if (r := cache_index[i]) is not None], dtype=hw.dtype)
            hidden, mask = b.hidden.to(hw.device), b.attention_mask.to(hw.device)
            with autocast(hw):
                for m, o in zip(models, out, strict=True):
                    _scatter(o, hits, m.forward_cached(hidden, mask), lengths)
        if misses:
            ids, mask = pad_ids([encoded[i] for i in misses], pad_id)
            ids, mask = ids.to(hw.device), mask.to(hw.device)
            if models[0].fusion is not None:
                if source is None:
                    raise ValueError("cross-model consumers need their documents' source states")
                src = source.batch(misses, ids.shape[1], hw.device, hw.dtype)
                with autocast(hw):
                    for m, o in zip(models, out, strict=True):
                        _scatter(o, misses, m.forward_text(ids, mask, src), lengths)
                continue
            with autocast(hw):
                hidden = lower.lower(ids, mask)
                for m, o in zip(models, out, strict=True):
                    _scatter(o, misses, m.forward_cached(hidden, mask), lengths)
    return cast(list[list[torch.Tensor]], out)  # every slot was filled by one batch's _scatter


def document_logits(
    model: RecyclingModel,
    encoded: Sequence[Encoded],
    cache: Cache | None,
    cache_index: Sequence[int | None],
    pad_id: int,
    batch_size: int = 64,
    hardware: Hardware | None = None,
    source: SourceStates | None = None,
) -> list[torch.Tensor]:
    """One model's logits for every document (see :func:`shared_document_logits`)."""
    return shared_document_logits([model], encoded, cache, cache_index, pad_id, batch_size, hardware, None, source)[0]


def _scatter(out: list[torch.Tensor | None], rows: list[int], logits: torch.Tensor, lengths: np.ndarray) -> None:
    logits = logits.float().cpu()
    for j, i in enumerate(rows):
        out[i] = logits[j, : lengths[i]].clone() if logits.dim() == 3 else logits[j].clone()
