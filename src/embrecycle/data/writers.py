"""Write labelled examples back to files the readers accept (JSON lines, CoNLL)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from .readers import Example

__all__ = ["serialise_examples", "write_examples"]


def serialise_examples(examples: Sequence[Example], ext: str) -> str:
    """``jsonl``: one ``{"text", "label"}`` object per line; ``conll``: ``word<TAB>tag`` lines, blank between."""
    if ext == "jsonl":
        return "".join(json.dumps({"text": e.doc, "label": e.label}, ensure_ascii=False) + "\n" for e in examples)
    return "\n".join("".join(f"{w}\t{t}\n" for w, t in zip(e.doc, e.label or [], strict=True)) for e in examples)


def write_examples(examples: Sequence[Example], path: Path) -> Path:
    """Write ``examples`` to ``path`` in the format its extension names (``.jsonl`` or ``.conll``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(serialise_examples(examples, path.suffix.lstrip(".")), encoding="utf-8")
    return path
