"""CoNLL-style files and tag schemes (IOB1, IOB2, BIOES), normalised to IOB2."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..errors import InputDataError

__all__ = ["entity_spans", "normalize_tags", "read_conll"]


def read_conll(path: Path) -> list[tuple[list[str], list[str] | None, str]]:
    """Sentences of a CoNLL file as ``(words, tags or None, "file:line")``.

    The word is the first column and the tag the last; columns are split on
    tabs, or on whitespace when a line has no tab. Blank lines end a sentence,
    ``-DOCSTART-`` lines are skipped. A file with one column has no tags.
    Tags are normalised to IOB2 (see :func:`normalize_tags`).

    Raises:
        InputDataError: invalid UTF-8, a line whose column count differs from the file's first line, or a tag
            that is not in a known scheme (each reported with its own line).
    """
    sentences: list[tuple[list[str], list[str] | None, str]] = []
    words: list[str] = []
    tags: list[str] = []
    start = 0
    ncols: int | None = None

    def flush() -> None:
        if words:
            has_tags = (ncols or 1) > 1
            norm = normalize_tags(tags, where=f"{path}:{start}") if has_tags else None
            sentences.append((list(words), norm, f"{path}:{start}"))
        words.clear()
        tags.clear()

    try:
        with open(path, encoding="utf-8") as f:
            for n, raw in enumerate(f, 1):
                line = raw.rstrip("\r\n")
                if not line.strip():
                    flush()
                    continue
                if line.startswith("-DOCSTART-"):
                    flush()
                    continue
                cols = line.split("\t") if "\t" in line else line.split()
                if ncols is None:
                    ncols = len(cols)
                if len(cols) != ncols:
                    raise InputDataError(
                        f"{path}:{n}: malformed CoNLL line {line!r}: {len(cols)} columns, but the file's first "
                        f"line has {ncols}. Expected the token first and the tag last, separated by tabs."
                    )
                if ncols > 1:
                    _split(cols[-1], f"{path}:{n}")  # a bad tag is reported on its own line
                if not words:
                    start = n
                words.append(cols[0])
                tags.append(cols[-1])
    except UnicodeDecodeError as e:
        raise InputDataError(f"{path}: invalid UTF-8 ({e.reason} at byte {e.start}); re-encode as UTF-8.") from e
    flush()
    return sentences


def _split(tag: str, where: str) -> tuple[str, str]:
    if tag == "O":
        return "O", ""
    if len(tag) > 2 and tag[1] in "-_" and tag[0] in "BIESLU":
        return tag[0], tag[2:]
    raise InputDataError(
        f"{where}: tag {tag!r} is not O or PREFIX-TYPE with PREFIX in B, I, E, S (or L, U), such as B-PER. "
        "The tag is the last column of the line: fix the tag, or the line's columns."
    )


def normalize_tags(tags: Sequence[str], where: str = "tags") -> list[str]:
    """IOB1, IOB2, BIOES or BILOU tags of one sentence as IOB2.

    ``I-X`` after ``O`` or after another type starts an entity (IOB1); ``S-``/``U-``
    become ``B-``, ``E-``/``L-`` become ``I-``.
    """
    out: list[str] = []
    prev_type = ""
    for tag in tags:
        prefix, etype = _split(tag, where)
        if prefix == "O":
            out.append("O")
            prev_type = ""
            continue
        if prefix in "BSU" or (prefix in "IEL" and etype != prev_type):
            out.append(f"B-{etype}")
        else:
            out.append(f"I-{etype}")
        prev_type = "" if prefix in "ELSU" else etype
    return out


def entity_spans(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """Entities of an IOB2 sentence as ``(type, start_word, end_word_exclusive)``."""
    spans: list[tuple[str, int, int]] = []
    cur: list = []
    for i, tag in enumerate([*list(tags), "O"]):
        if cur and not (tag.startswith("I-") and tag[2:] == cur[0]):
            spans.append((cur[0], cur[1], i))
            cur = []
        if tag.startswith("B-") or (tag.startswith("I-") and not cur):
            cur = [tag[2:], i]
    return spans
