"""Batched forward passes over documents: cached states where available, the lower layers otherwise."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .batching import eval_batches
from .cache.store import Cache
from .model import RecyclingModel
from .tokenization import Encoded, pad_ids


@torch.inference_mode()
def document_logits(
    model: RecyclingModel,
    encoded: Sequence[Encoded],
    cache: Cache | None,
    cache_index: Sequence[int | None],
    pad_id: int,
    batch_size: int = 64,
) -> list[torch.Tensor]:
    """Logits of every document, unpadded: ``(classes,)`` or ``(n_tokens, classes)`` each.

    Documents with a cache index read their layer-k states; the others run
    the lower layers from their token ids.
    """
    model.eval()
    out: list[torch.Tensor | None] = [None] * len(encoded)
    lengths = np.array([len(e.input_ids) for e in encoded])
    for batch in eval_batches(lengths, batch_size):
        hits = [int(i) for i in batch if cache_index[i] is not None]
        misses = [int(i) for i in batch if cache_index[i] is None]
        if hits:
            assert cache is not None
            b = cache.read_batch([cache_index[i] for i in hits])  # type: ignore[misc]
            _scatter(out, hits, model.forward_cached(b.hidden, b.attention_mask), lengths)
        if misses:
            ids, mask = pad_ids([encoded[i] for i in misses], pad_id)
            _scatter(out, misses, model.forward_text(ids, mask), lengths)
    return out  # type: ignore[return-value]


def _scatter(out: list, rows: list[int], logits: torch.Tensor, lengths: np.ndarray) -> None:
    for j, i in enumerate(rows):
        out[i] = logits[j, : lengths[i]].clone() if logits.dim() == 3 else logits[j].clone()
