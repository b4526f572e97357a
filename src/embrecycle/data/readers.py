"""Read documents (and labels) from JSON lines, CSV/TSV, plain text or CoNLL files.

Every reader reports a bad line with its file and line number, and never
returns half a file: it raises before the caller sees any example.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputDataError
from .conll import read_conll

__all__ = ["FORMATS", "Example", "detect_format", "read_examples"]

FORMATS = ("jsonl", "csv", "tsv", "txt", "conll")
_EXTENSIONS = {
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".tsv": "tsv",
    ".txt": "txt",
    ".text": "txt",
    ".conll": "conll",
    ".iob": "conll",
    ".bio": "conll",
    ".iob2": "conll",
    ".conllu": "conll",
}


@dataclass
class Example:
    """One document from a file.

    Attributes:
        doc: The text, or the list of words for pre-tokenized (CoNLL) input.
        label: Class label (text formats), per-word tags (CoNLL), or None.
        source: ``file:line`` where the document starts.
    """

    doc: str | list[str]
    label: str | list[str] | None
    source: str


def detect_format(path: str | os.PathLike[str], fmt: str | None = None) -> str:
    """The format of ``path``: ``fmt`` if given, else from the file extension."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise InputDataError(f"format={fmt!r} is not supported: choose one of {list(FORMATS)}.")
        return fmt
    ext = Path(path).suffix.lower()
    if ext not in _EXTENSIONS:
        raise InputDataError(
            f"cannot tell the format of {path} from its extension {ext!r}; pass --format (one of {list(FORMATS)})."
        )
    return _EXTENSIONS[ext]


def read_examples(
    path: str | os.PathLike[str],
    fmt: str | None = None,
    text_field: str = "text",
    label_field: str | None = "label",
) -> list[Example]:
    """All documents of a file.

    Args:
        path: Input file.
        fmt: One of :data:`FORMATS`; default from the extension.
        text_field: Field holding the text (JSON lines and CSV).
        label_field: Field holding the label (JSON lines and CSV); missing labels become None.

    Raises:
        InputDataError: unreadable file, invalid UTF-8, malformed line, missing text field.
    """
    p = Path(path)
    fmt = detect_format(p, fmt)
    if not p.is_file():
        raise InputDataError(f"input file {p} does not exist or is not a file.")
    if fmt == "conll":
        return [Example(words, tags, src) for words, tags, src in read_conll(p)]
    try:
        return list(_READERS[fmt](p, text_field, label_field))
    except UnicodeDecodeError as e:
        line = _line_of_offset(p, e.start)
        raise InputDataError(
            f"{p}:{line}: invalid UTF-8 ({e.reason} at byte {e.start}). Re-encode the file as UTF-8 "
            "(for example `iconv -f latin1 -t utf-8`)."
        ) from e


def _line_of_offset(path: Path, offset: int) -> int:
    with open(path, "rb") as f:
        return f.read(offset).count(b"\n") + 1


def _jsonl(p: Path, text_field: str, label_field: str | None) -> Iterator[Example]:
    with open(p, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputDataError(f"{p}:{n}: not valid JSON ({e.msg}).") from e
            if not isinstance(row, dict):
                raise InputDataError(f"{p}:{n}: expected a JSON object per line, got {type(row).__name__}.")
            if text_field not in row:
                raise InputDataError(
                    f"{p}:{n}: no field {text_field!r}; fields are {sorted(row)}. Pass --text-field NAME."
                )
            text = row[text_field]
            if not isinstance(text, str):
                raise InputDataError(f"{p}:{n}: field {text_field!r} is {type(text).__name__}, not a string.")
            label = row.get(label_field) if label_field else None
            yield Example(text, None if label is None else str(label), f"{p}:{n}")


def _csv(p: Path, text_field: str, label_field: str | None, delimiter: str = ",") -> Iterator[Example]:
    with open(p, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        if reader.fieldnames is None or text_field not in reader.fieldnames:
            raise InputDataError(
                f"{p}:1: no column {text_field!r}; columns are {reader.fieldnames}. Pass --text-field NAME."
            )
        for row in reader:
            label = row.get(label_field) if label_field else None
            yield Example(row[text_field] or "", label or None, f"{p}:{reader.line_num}")


def _tsv(p: Path, text_field: str, label_field: str | None) -> Iterator[Example]:
    return _csv(p, text_field, label_field, delimiter="\t")


def _txt(p: Path, text_field: str, label_field: str | None) -> Iterator[Example]:
    with open(p, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            yield Example(line.rstrip("\r\n"), None, f"{p}:{n}")


_READERS = {"jsonl": _jsonl, "csv": _csv, "tsv": _tsv, "txt": _txt}
