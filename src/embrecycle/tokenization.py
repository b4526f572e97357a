"""Turn documents into token ids, word ids and character offsets, enforcing the length policy."""

from __future__ import annotations

import logging
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from .errors import ConfigError, InputDataError

__all__ = [
    "Encoded",
    "check_token_limit",
    "encode_documents",
    "is_empty",
    "pad_ids",
    "set_token_limit",
    "token_limit",
    "warn_truncated",
]

log = logging.getLogger(__name__)

# Tokens per document each loaded tokenizer's model takes (see :func:`set_token_limit`).
_LIMITS: weakref.WeakKeyDictionary[PreTrainedTokenizerBase, tuple[int, str] | None] = weakref.WeakKeyDictionary()
_NO_LIMIT = 1_000_000  # transformers' "no limit known" model_max_length is 1e30


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


def set_token_limit(tokenizer: PreTrainedTokenizerBase, limit: tuple[int, str] | None) -> None:
    """Record what ``tokenizer``'s model takes: ``(most tokens per document, where that comes from)``, or None
    for a model without a position limit; :func:`encode_documents` then refuses a larger ``max_length``."""
    _LIMITS[tokenizer] = limit


def token_limit(tokenizer: PreTrainedTokenizerBase) -> tuple[int, str] | None:
    """``(limit, why)``: the recorded limit of the tokenizer's model (see :func:`set_token_limit`), else the
    tokenizer's own ``model_max_length`` when it states one; None when there is no known limit."""
    if tokenizer in _LIMITS:
        return _LIMITS[tokenizer]
    own = getattr(tokenizer, "model_max_length", None)
    if isinstance(own, int) and 0 < own < _NO_LIMIT:
        return own, f"the tokenizer's model_max_length is {own}"
    return None


def check_token_limit(tokenizer: PreTrainedTokenizerBase, max_length: int, name: str = "the model") -> None:
    """Raise ConfigError when ``max_length`` exceeds what ``tokenizer``'s model takes (see :func:`token_limit`)."""
    known = token_limit(tokenizer)
    if known is not None and max_length > known[0]:
        limit, why = known
        raise ConfigError(
            f"max_length={max_length} is more than {name} takes: at most {limit} tokens per document ({why}). "
            f"Pass --max-length {limit} or less, or leave it out (the default is the model's limit, at most 512)."
        )


def encode_documents(
    tokenizer: PreTrainedTokenizerBase,
    docs: Sequence[str | Sequence[str]],
    max_length: int,
    truncation: str = "truncate",
    sources: Sequence[str] | None = None,
    warn: bool = True,
) -> list[Encoded]:
    """Tokenize texts and word lists (CoNLL) alike.

    Documents longer than ``max_length`` tokens are truncated (``truncation="truncate"``) and, with ``warn``,
    counted in one warning per call (see :func:`warn_truncated`).

    Raises:
        ConfigError: ``max_length`` is more than the tokenizer's model takes (see :func:`check_token_limit`).
        InputDataError: with ``truncation="error"``, a document longer than ``max_length`` tokens.
    """
    check_token_limit(tokenizer, max_length)
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
    encoded = cast(list[Encoded], out)  # both passes together fill every slot
    if warn:
        warn_truncated(encoded, docs, max_length, sources)
    return encoded


def words_cut_off(encoded: Encoded, doc: str | Sequence[str]) -> int:
    """How many words of ``doc`` have no token in ``encoded`` (cut off by truncation)."""
    if not encoded.truncated:
        return 0
    if isinstance(doc, str):
        ends = [end for (_start, end), w in zip(encoded.offsets, encoded.word_ids, strict=True) if w >= 0]
        return len(doc[max(ends, default=0) :].split())
    seen = max(encoded.word_ids, default=-1) + 1
    return len(doc) - seen


def warn_truncated(
    encoded: Sequence[Encoded],
    docs: Sequence[str | Sequence[str]],
    max_length: int,
    sources: Sequence[str] | None = None,
) -> None:
    """One warning for the truncated documents of a call: how many, how many words were cut off, the fix."""
    cut = [i for i, e in enumerate(encoded) if e.truncated]
    if not cut:
        return
    words = sum(words_cut_off(encoded[i], docs[i]) for i in cut)
    where = f"; the first is {sources[cut[0]]}" if sources else ""
    tagged = "" if isinstance(docs[cut[0]], str) else " (they are tagged O and not trained on)"  # word lists: NER
    log.warning(
        "%d of %d documents are longer than max_length=%d tokens and were truncated: %d words at their ends are "
        "not seen by the model%s%s. Raise --max-length (up to the model's limit) to keep them, or pass "
        "--truncation error to stop instead.",
        len(cut),
        len(encoded),
        max_length,
        words,
        tagged,
        where,
    )


def pad_ids(encoded: Sequence[Encoded], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``(input_ids, attention_mask)`` of a batch."""
    lens = [len(e.input_ids) for e in encoded]
    ids = torch.full((len(encoded), max(lens)), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for j, e in enumerate(encoded):
        ids[j, : lens[j]] = torch.tensor(e.input_ids)
        mask[j, : lens[j]] = 1
    return ids, mask
