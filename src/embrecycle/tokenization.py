"""Turn documents into token ids, word ids and character offsets, enforcing the length policy."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from .errors import InputDataError

__all__ = ["Encoded", "encode_documents", "is_empty", "pad_ids"]


@dataclass
class Encoded:
    """One tokenized document.

    Attributes:
        input_ids: Token ids with special tokens.
        word_ids: Word index per token (-1 for special tokens).
        offsets: Character ``(start, end)`` of each token in its text (or word).
        truncated: Whether the document was cut to ``max_length``.
    """

    input_ids: list[int]
    word_ids: list[int]
    offsets: list[tuple[int, int]]
    truncated: bool

    @classmethod
    def from_table(cls, table: np.ndarray, truncated: bool) -> Encoded:
        """The inverse of :meth:`token_table` (a cache stores the table: cached documents need no tokenizer)."""
        return cls(table[:, 0].tolist(), table[:, 1].tolist(), [(int(a), int(b)) for a, b in table[:, 2:4]], truncated)

    def token_table(self) -> np.ndarray:
        """``(n_tokens, 4)`` int32: input id, word id, char start, char end."""
        t = np.empty((len(self.input_ids), 4), np.int32)
        t[:, 0] = self.input_ids
        t[:, 1] = self.word_ids
        t[:, 2:4] = np.asarray(self.offsets, dtype=np.int32).reshape(-1, 2)
        return t


def is_empty(doc: str | Sequence[str]) -> bool:
    """A document with no content: blank text or no words."""
    return not doc.strip() if isinstance(doc, str) else not any(w.strip() for w in doc)


def encode_documents(
    tokenizer: PreTrainedTokenizerBase,
    docs: Sequence[str | Sequence[str]],
    max_length: int,
    truncation: str = "truncate",
    sources: Sequence[str] | None = None,
) -> list[Encoded]:
    """Tokenize texts and word lists (CoNLL) alike.

    Raises:
        InputDataError: with ``truncation="error"``, a document longer than ``max_length`` tokens.
    """
    out: list[Encoded | None] = [None] * len(docs)
    for split_words in (False, True):
        idx = [i for i, d in enumerate(docs) if isinstance(d, str) != split_words]
        if not idx:
            continue
        batch = [list(docs[i]) if split_words else docs[i] for i in idx]
        full = tokenizer(
            batch, is_split_into_words=split_words, truncation=False, return_offsets_mapping=True, verbose=False
        )
        long = [j for j, ids in enumerate(full["input_ids"]) if len(ids) > max_length]
        if long and truncation == "error":
            j = long[0]
            where = sources[idx[j]] if sources else f"document {idx[j]}"
            raise InputDataError(
                f"{where}: {len(full['input_ids'][j])} tokens exceed max_length={max_length} "
                f"({len(long)} such documents). Raise --max-length or use --truncation truncate."
            )
        cut = None
        if long:
            cut = tokenizer(
                [batch[j] for j in long],
                is_split_into_words=split_words,
                truncation=True,
                max_length=max_length,
                return_offsets_mapping=True,
            )
        pos = {j: n for n, j in enumerate(long)}
        for j, i in enumerate(idx):
            enc, row = (cut, pos[j]) if j in pos else (full, j)
            assert enc is not None
            word_ids = [-1 if w is None else w for w in enc.word_ids(row)]
            out[i] = Encoded(list(enc["input_ids"][row]), word_ids, list(enc["offset_mapping"][row]), j in pos)
    return cast(list[Encoded], out)  # both passes together fill every slot


def pad_ids(encoded: Sequence[Encoded], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``(input_ids, attention_mask)`` of a batch."""
    lens = [len(e.input_ids) for e in encoded]
    ids = torch.full((len(encoded), max(lens)), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for j, e in enumerate(encoded):
        ids[j, : lens[j]] = torch.tensor(e.input_ids)
        mask[j, : lens[j]] = 1
    return ids, mask
