"""Markdown pieces of the benchmark reports: tables, number formats, and replacing a marked block of a file."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["fmt", "markdown_table", "pct", "replace_block"]


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]], align: str | None = None) -> list[str]:
    """The lines of a Markdown table: ``| a | b |``, a separator, one line per row.

    Args:
        header: Column titles.
        rows: Cells per row (formatted with ``str``).
        align: One letter per column, ``l`` (``---``) or ``r`` (``---:``); default: every column ``---``.
    """
    seps = ["---:" if a == "r" else "---" for a in (align or "l" * len(header))]
    return [_row(header), "|" + "|".join(seps) + "|", *(_row(r) for r in rows)]


def _row(cells: Sequence[Any]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def fmt(x: float | None, spec: str, suffix: str = "") -> str:
    """``x`` formatted with ``spec`` (and ``suffix``); ``n/a`` for no value."""
    return "n/a" if x is None else f"{x:{spec}}{suffix}"


def pct(x: float | None, missing: str = "-") -> str:
    """``0.987`` as ``98.7%``; ``missing`` for no value."""
    return missing if x is None else f"{x:.1%}"


def replace_block(path: Path, start: str, end: str, block: str) -> bool:
    """Replace the text from marker ``start`` to marker ``end`` (both kept) in ``path`` with ``block``.

    Returns False, changing nothing, when a marker is missing.
    """
    text = path.read_text(encoding="utf-8")
    if start not in text or end not in text:
        return False
    whole = f"{start}\n{block}\n{end}"
    new = re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _: whole, text, flags=re.S)
    path.write_text(new, encoding="utf-8")
    return True
