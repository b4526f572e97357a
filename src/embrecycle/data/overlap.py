"""Train/test overlap: test documents that also occur in training (exactly, or up to whitespace and case).

A model scored on documents it trained on looks better than it is. Recycling makes the check free
for cached corpora (a document's key is a hash of its content), and for files it is one pass of
hashing. Word-list documents (CoNLL) are compared as their words joined by single spaces.

Example:
    >>> from embrecycle.data.readers import Example
    >>> train = [Example("The cat sat.", "a", "t:1"), Example("A dog.", "b", "t:2")]
    >>> test = [Example("the  CAT sat.", "a", "s:1"), Example("A dog.", "b", "s:2"), Example("New.", "a", "s:3")]
    >>> o = find_overlap(train, test)
    >>> (o.exact, o.normalised)
    (1, 2)
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .readers import Example

__all__ = ["Overlap", "OverlapExample", "find_overlap", "key_overlap", "normalise"]

SHOWN = 5
"""Overlapping pairs named in a report."""


def _text(doc: str | Sequence[str]) -> str:
    return doc if isinstance(doc, str) else " ".join(doc)


def normalise(doc: str | Sequence[str]) -> str:
    """The document with runs of whitespace made one space, stripped, and case-folded."""
    return " ".join(_text(doc).split()).casefold()


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


@dataclass(frozen=True)
class OverlapExample:
    """One test document that occurs in training."""

    test_source: str
    train_source: str
    text: str
    exact: bool


@dataclass
class Overlap:
    """How many test documents occur in training."""

    train_documents: int
    test_documents: int
    exact: int
    """Test documents equal to a training document, character for character."""
    normalised: int
    """Test documents equal to one after whitespace and case normalisation (the exact ones included)."""
    examples: list[OverlapExample] = field(default_factory=list)
    normalisation_checked: bool = True
    """False when a side was a cache: caches hold keys of the exact text, so only exact copies are found."""

    @property
    def any(self) -> bool:
        return self.normalised > 0

    def summary(self, train: str = "training", test: str = "test") -> str:
        share = self.normalised / self.test_documents if self.test_documents else 0.0
        how = (
            f"{self.exact} exactly, {self.normalised - self.exact} after whitespace/case normalisation"
            if self.normalisation_checked
            else "exact copies only: a cache holds keys of the exact text; compare the data files to find "
            "copies that differ in whitespace or case"
        )
        lines = [
            f"{self.normalised} of {self.test_documents} {test} documents ({share:.1%}) also occur in {train} ({how})"
        ]
        for e in self.examples:
            how = "exact" if e.exact else "normalised"
            lines.append(f"  {e.test_source} = {e.train_source} ({how}): {e.text[:80]!r}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "train_documents": self.train_documents,
            "test_documents": self.test_documents,
            "exact": self.exact,
            "normalised": self.normalised,
            "normalisation_checked": self.normalisation_checked,
            "examples": [e.__dict__ for e in self.examples],
        }


def find_overlap(train: Sequence[Example], test: Sequence[Example], shown: int = SHOWN) -> Overlap:
    """Test documents that occur in ``train`` (each test document counted once, its first match named; blank
    documents are not counted on either side)."""
    exact: dict[bytes, str] = {}
    loose: dict[bytes, str] = {}
    train = [e for e in train if normalise(e.doc)]  # blank documents are never cached, and no leak
    test = [e for e in test if normalise(e.doc)]
    for e in train:
        exact.setdefault(_digest(_text(e.doc)), e.source)
        loose.setdefault(_digest(normalise(e.doc)), e.source)
    n_exact = n_loose = 0
    examples: list[OverlapExample] = []
    for e in test:
        hit = exact.get(_digest(_text(e.doc)))
        loose_hit = hit if hit is not None else loose.get(_digest(normalise(e.doc)))
        if loose_hit is None:
            continue
        n_loose += 1
        n_exact += hit is not None
        if len(examples) < shown:
            examples.append(OverlapExample(e.source, loose_hit, _text(e.doc), hit is not None))
    return Overlap(len(train), len(test), n_exact, n_loose, examples)


def key_overlap(
    train_keys: Sequence[bytes],
    test_keys: Sequence[bytes],
    shown: int = SHOWN,
    train_sources: Sequence[str] | None = None,
    test_sources: Sequence[str] | None = None,
    test_texts: Sequence[str] | None = None,
) -> Overlap:
    """Exact overlap of two sides keyed under the same cache settings (a cache's keys, or a file's documents keyed
    under the other side's cache). ``*_sources`` (``file:line`` per key, for a side that is a file) and
    ``test_texts`` name the examples; a cache side is named by its keys."""
    known: dict[bytes, str] = {}
    for i, k in enumerate(train_keys):
        known.setdefault(k, train_sources[i] if train_sources else f"training key {k.hex()[:16]}")
    examples: list[OverlapExample] = []
    hits = 0
    for i, k in enumerate(test_keys):
        if k not in known:
            continue
        hits += 1
        if len(examples) < shown:
            source = test_sources[i] if test_sources else f"test key {k.hex()[:16]}"
            examples.append(OverlapExample(source, known[k], test_texts[i] if test_texts else "", True))
    return Overlap(len(train_keys), len(test_keys), hits, hits, examples, normalisation_checked=False)
