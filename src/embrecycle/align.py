"""Aligning two tokenizations of one document by character spans (for cross-model recycling).

A consumer model reading a source model's cached states needs, for each of its own tokens, the source's
state "for the same text". Tokenizers differ (WordPiece, BPE, SentencePiece; different vocabularies), so
tokens are matched by the characters they cover, which the cache stores for every token:

- a content token gets the mean of the source's content tokens whose character spans overlap its own (texts:
  spans in the text; word lists: spans within the same word, so words never bleed into each other);
- a special token at the start (``[CLS]``, ``<s>``) gets the source's first special token, one at the end
  (``[SEP]``, ``</s>``) the source's last;
- a token with no overlapping source token (a document the source truncated earlier) gets nothing (zeros).

For two identical tokenizations every token overlaps exactly its twin: the alignment is the identity.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .tokenization import Encoded

__all__ = ["Alignment", "align", "aligned_states", "token_spans"]

WORD_STRIDE = 1 << 24
"""Word lists: a token's span is placed at ``word_id * WORD_STRIDE + offset``, so spans of different words
never overlap (a word is far shorter than 16M characters)."""


@dataclass(frozen=True)
class Alignment:
    """A sparse ``(consumer_tokens, source_tokens)`` matrix of averaging weights (each row sums to 1 or 0)."""

    rows: np.ndarray
    cols: np.ndarray
    weights: np.ndarray
    shape: tuple[int, int]

    def dense(self) -> np.ndarray:
        out = np.zeros(self.shape, np.float32)
        out[self.rows, self.cols] = self.weights
        return out

    def is_identity(self) -> bool:
        n, m = self.shape
        return (
            n == m
            and len(self.rows) == n
            and bool(
                np.all(self.rows == np.arange(n)) and np.all(self.cols == np.arange(n)) and np.all(self.weights == 1)
            )
        )


def token_spans(encoded: Encoded, words: bool) -> np.ndarray:
    """``(tokens, 2)`` int64 character spans on one axis for every token; ``-1, -1`` for special tokens.

    Zero-width spans of content tokens are widened to one character (they still sit somewhere in the text).
    """
    offsets = np.asarray(encoded.offsets, dtype=np.int64).reshape(-1, 2)
    word_ids = np.asarray(encoded.word_ids, dtype=np.int64)
    spans = offsets.copy()
    spans[:, 1] = np.maximum(spans[:, 1], spans[:, 0] + 1)
    if words:
        spans += (np.maximum(word_ids, 0) * WORD_STRIDE)[:, None]
    spans[word_ids < 0] = -1
    return spans


def align(consumer: Encoded, source: Encoded, words: bool) -> Alignment:
    """The averaging weights mapping ``source``'s token states onto ``consumer``'s tokens (see the module doc).

    Args:
        consumer: The consumer tokenizer's encoding of the document.
        source: The source tokenizer's encoding of the same document (as its cache stores it).
        words: The document is a word list (CoNLL) rather than a text.
    """
    cs, ss = token_spans(consumer, words), token_spans(source, words)
    c_content, s_content = cs[:, 0] >= 0, ss[:, 0] >= 0
    overlap = (cs[:, None, 0] < ss[None, :, 1]) & (ss[None, :, 0] < cs[:, None, 1])
    overlap &= c_content[:, None] & s_content[None, :]
    rows, cols = np.nonzero(overlap)
    counts = overlap.sum(1)
    weights = (1.0 / counts[rows]).astype(np.float32)
    specials = np.flatnonzero(~s_content)
    extra_r: list[int] = []
    extra_c: list[int] = []
    if len(specials):
        first_content = int(np.argmax(c_content)) if c_content.any() else 1  # no content: [CLS] [SEP]
        for j in np.flatnonzero(~c_content):
            extra_r.append(int(j))
            extra_c.append(int(specials[0] if j < first_content else specials[-1]))
    if extra_r:
        rows = np.concatenate([rows, np.array(extra_r, np.int64)])
        cols = np.concatenate([cols, np.array(extra_c, np.int64)])
        weights = np.concatenate([weights, np.ones(len(extra_r), np.float32)])
        order = np.lexsort((cols, rows))
        rows, cols, weights = rows[order], cols[order], weights[order]
    return Alignment(rows.astype(np.int64), cols.astype(np.int64), weights, (len(cs), len(ss)))


def aligned_states(alignments: Sequence[Alignment], source: torch.Tensor, consumer_len: int) -> torch.Tensor:
    """``(batch, consumer_len, source_hidden)``: each document's source states averaged onto its consumer tokens.

    ``source`` is a padded batch of the documents' source states ``(batch, source_len, source_hidden)``; the
    result is in its dtype and on its device, zero beyond each document's consumer tokens.
    """
    batch, source_len, hidden = source.shape
    out = source.new_zeros(batch, consumer_len, hidden)
    for b, a in enumerate(alignments):
        if not len(a.rows):
            continue
        rows = torch.from_numpy(a.rows).to(source.device)
        cols = torch.from_numpy(a.cols).to(source.device)
        w = torch.from_numpy(a.weights).to(source.device, source.dtype)
        keep = (rows < consumer_len) & (cols < source_len)
        out[b].index_add_(0, rows[keep], source[b, cols[keep]] * w[keep, None])
    return out
