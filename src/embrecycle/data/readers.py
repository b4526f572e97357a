"""Read documents (and labels) from JSON lines, CSV/TSV, plain text or CoNLL files.

Every reader reports a bad line with its file and line number, and never
returns half a file: it raises before the caller sees any example.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputDataError, MissingDependencyError
from .conll import read_conll

__all__ = ["FORMATS", "Example", "detect_format", "label_text", "read_examples"]

FORMATS = ("jsonl", "csv", "tsv", "txt", "conll", "parquet")
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
    ".parquet": "parquet",
    ".pq": "parquet",
}


@dataclass
class Example:
    """One document from a file.

    Attributes:
        doc: The text, or the list of words for pre-tokenized (CoNLL) input.
        label: Class label (text formats), per-word tags (CoNLL), or None.
        source: ``file:line`` where the document starts.
        missing_label: When ``label`` is None, why (for example ``no field 'labl'; fields are [...]``), so
            that a task that needs labels can say which field it looked for and what the row has.
    """

    doc: str | list[str]
    label: str | list[str] | None
    source: str
    missing_label: str | None = field(default=None, repr=False, compare=False)


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

    Labels (JSON lines and CSV) become text: strings as they are, integers in decimal (a JSON float with an
    integral value, such as ``1.0``, is the same class as ``1``), booleans as ``true``/``false``. A missing
    label, an empty CSV cell or JSON ``null`` is None, and :attr:`Example.missing_label` says why.

    Args:
        path: Input file.
        fmt: One of :data:`FORMATS`; default from the extension.
        text_field: Field holding the text (JSON lines and CSV).
        label_field: Field holding the label (JSON lines and CSV); missing labels become None.

    Raises:
        InputDataError: unreadable file, invalid UTF-8, malformed line or CSV row, missing text field, a label
            that is not a string, integer or boolean, a lone UTF-16 surrogate in a JSON string.
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
        offset = _decode_error_offset(p, e.start)
        raise InputDataError(
            f"{p}:{_line_of_offset(p, offset)}: invalid UTF-8 ({e.reason} at byte {offset}). Re-encode the file "
            "as UTF-8 (for example `iconv -f latin1 -t utf-8`)."
        ) from e


def _decode_error_offset(path: Path, fallback: int) -> int:
    """The byte offset of the first invalid UTF-8 in ``path`` (a text stream's error counts from its chunk)."""
    try:
        path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        return e.start
    return fallback


def _line_of_offset(path: Path, offset: int) -> int:
    with open(path, "rb") as f:
        return f.read(offset).count(b"\n") + 1


def label_text(value: Any, where: str, label_field: str) -> str | None:
    """A label value as its class name: see :func:`read_examples` (None stays None).

    Raises:
        InputDataError: a list, object, non-integral number or other value that is not a class name.
    """
    if value is None:
        return None
    if isinstance(value, bool):  # before int: bool is an int
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, str):
        return _checked_text(value, where, label_field)
    kind = {list: "a list", dict: "an object", float: "a non-integral number"}.get(type(value), type(value).__name__)
    raise InputDataError(
        f"{where}: field {label_field!r} is {kind} ({json.dumps(value, ensure_ascii=False)[:80]}); a label must be "
        "one string, integer or boolean per document. Fix the label, or pass --label-field NAME if the labels "
        "are in another field."
    )


def _checked_text(value: str, where: str, name: str) -> str:
    """``value``, unless it holds a lone UTF-16 surrogate (a JSON ``\\ud800`` escape without its pair)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        char = value[e.start]
        raise InputDataError(
            f"{where}: field {name!r} holds a lone UTF-16 surrogate (\\u{ord(char):04x} at character {e.start}), "
            "which is not text and cannot be encoded. A JSON \\ud800-\\udbff escape must be followed by a "
            "\\udc00-\\udfff one: fix or remove the escape on that line (the file's writer split a character)."
        ) from None
    return value


def _jsonl(p: Path, text_field: str, label_field: str | None) -> Iterator[Example]:
    with open(p, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                yield _json_example(line, f"{p}:{n}", text_field, label_field)


def _json_example(line: str, where: str, text_field: str, label_field: str | None) -> Example:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise InputDataError(f"{where}: not valid JSON ({e.msg}).") from e
    return _row_example(row, where, text_field, label_field)


def _row_example(row: Any, where: str, text_field: str, label_field: str | None) -> Example:
    """One record (a JSON line's object, a Parquet row) as an example."""
    if not isinstance(row, dict):
        raise InputDataError(f"{where}: expected a JSON object per line, got {type(row).__name__}.")
    if text_field not in row:
        raise InputDataError(f"{where}: no field {text_field!r}; fields are {sorted(row)}. Pass --text-field NAME.")
    text = row[text_field]
    if not isinstance(text, str):
        raise InputDataError(f"{where}: field {text_field!r} is {type(text).__name__}, not a string.")
    text = _checked_text(text, where, text_field)
    if not label_field:
        return Example(text, None, where)
    label = label_text(row.get(label_field), where, label_field)
    missing = None
    if label is None:
        missing = f"field {label_field!r} is null" if label_field in row else f"no field {label_field!r}"
        missing += f"; fields are {sorted(row)}"
    return Example(text, label, where, missing)


def _csv(p: Path, text_field: str, label_field: str | None, delimiter: str = ",") -> Iterator[Example]:
    """Rows of a CSV (or TSV) file, parsed strictly.

    A row is malformed, and reported with the line it starts on, when:

    * the file ends inside a quoted field (a quote was opened and never closed);
    * a quoted field's closing quote is followed by anything but the delimiter or the line end;
    * its number of fields differs from the header's (an unquoted delimiter in a text, a missing cell);
    * it spans three lines or more and every one of those lines, read with quotes as plain characters, is
      a complete row with the header's number of fields: a stray opening quote has swallowed the rows that
      followed it into one field. (A legitimate multi-line text rarely splits that way: its line breaks sit
      inside one field, so its lines do not each carry a full row's delimiters. A stray quote that swallows
      a single row and is closed right at that row's end, which strict parsing cannot see either, is
      let through rather than risk refusing legitimate two-line texts.)
    """
    with open(p, encoding="utf-8-sig", newline="") as f:  # -sig: spreadsheet exports start with a BOM
        lines = list(f)
    reader = csv.reader(lines, delimiter=delimiter, strict=True)
    header = _csv_row(reader, p, 1, delimiter)
    if header is None or text_field not in header:
        raise InputDataError(f"{p}:1: no column {text_field!r}; columns are {header}. Pass --text-field NAME.")
    text_at = header.index(text_field)
    label_at = header.index(label_field) if label_field and label_field in header else None
    start = reader.line_num + 1
    while (row := _csv_row(reader, p, start, delimiter)) is not None:
        end = reader.line_num
        if row:  # csv gives [] for a blank line
            _check_csv_row(row, header, lines[start - 1 : end], f"{p}:{start}", delimiter)
            yield _csv_example(row, text_at, label_at, header, label_field, f"{p}:{start}")
        start = end + 1


def _csv_row(reader: Any, p: Path, start: int, delimiter: str) -> list[str] | None:
    """The next row, or None at the end; a csv error becomes an InputDataError naming the row's first line."""
    try:
        return next(reader)
    except StopIteration:
        return None
    except csv.Error as e:
        if "unexpected end of data" in str(e):
            raise InputDataError(
                f"{p}:{start}: a quoted field opened in the row starting on this line is never closed (the file "
                "ends inside quotes), so every later line would be merged into it. Remove the stray '\"', or "
                'quote the whole field and double each quote inside it ("").'
            ) from e
        raise InputDataError(
            f"{p}:{reader.line_num}: malformed CSV row (starting on line {start}): {e}. A quoted field must end with "
            f"'\"' followed by {delimiter!r} or the line end: remove the stray '\"', or quote the whole field and "
            'double each quote inside it ("").'
        ) from e


def _check_csv_row(row: list[str], header: list[str], raw: Sequence[str], where: str, delimiter: str) -> None:
    """Raise InputDataError for a row with the wrong number of fields or one that swallowed later rows."""
    if len(row) != len(header):
        raise InputDataError(
            f"{where}: {len(row)} fields, but the header has {len(header)} ({header}). Quote fields that contain "
            f'{delimiter!r} ("like{delimiter} this"), and give every row a value (possibly empty) for every column.'
        )
    if len(raw) > 2 and all(len(_plain_fields(line, delimiter)) == len(header) for line in raw):
        raise InputDataError(
            f"{where}: a quote opens a field that runs on over {len(raw)} lines, each of which looks like a row of "
            f"its own ({raw[1].rstrip()!r}, ...): a stray '\"' has merged them into one document. Remove the "
            'stray quote, or quote the whole field and double each quote inside it ("").'
        )


def _plain_fields(line: str, delimiter: str) -> list[str]:
    """The fields of one physical line with quotes read as ordinary characters."""
    return next(csv.reader([line.rstrip("\r\n")], delimiter=delimiter, quoting=csv.QUOTE_NONE), [])


def _csv_example(
    row: list[str], text_at: int, label_at: int | None, header: list[str], label_field: str | None, where: str
) -> Example:
    text = row[text_at]
    if label_field is None:
        return Example(text, None, where)
    if label_at is None:
        return Example(text, None, where, f"the file has no column {label_field!r}; columns are {header}")
    label = row[label_at] or None
    return Example(text, label, where, None if label else f"column {label_field!r} is empty")


def _tsv(p: Path, text_field: str, label_field: str | None) -> Iterator[Example]:
    return _csv(p, text_field, label_field, delimiter="\t")


def _txt(p: Path, text_field: str, label_field: str | None) -> Iterator[Example]:
    with open(p, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            yield Example(line.rstrip("\r\n"), None, f"{p}:{n}")


def _parquet(p: Path, text_field: str, label_field: str | None) -> Iterator[Example]:
    """Rows of a Parquet file (needs ``pyarrow``, which the ``[ray]`` extra installs), as JSON lines' objects."""
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise MissingDependencyError(
            f"reading {p} needs pyarrow ({e}): `pip install pyarrow` (or 'embrecycle[ray]'), or convert the file "
            "to JSON lines."
        ) from e
    try:
        table = pq.read_table(p)
    except Exception as e:  # pyarrow raises its own ArrowInvalid/OSError kinds for damaged files
        raise InputDataError(f"{p}: not a readable Parquet file ({e}).") from e
    if text_field not in table.column_names:
        raise InputDataError(
            f"{p}: no column {text_field!r}; columns are {table.column_names}. Pass --text-field NAME."
        )
    for n, row in enumerate(table.to_pylist(), 1):
        yield _row_example(row, f"{p}:row {n}", text_field, label_field)


_READERS = {"jsonl": _jsonl, "csv": _csv, "tsv": _tsv, "txt": _txt, "parquet": _parquet}
