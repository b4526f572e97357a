"""Benchmark rows kept one per finished run in a JSON-lines file, so that an interrupted benchmark resumes.

runs = KeptRows(RESULTS / "my_benchmark" / "runs.jsonl")
done = {r["seed"] for r in runs.rows()}
runs.keep({"seed": 1, "test": 0.81})  # appended and flushed at once: a kill loses the run in flight only
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class KeptRows:
    """The rows of ``path`` (one JSON object a line); rows are only ever appended."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def rows(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        lines = self.path.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def keep(self, row: dict[str, Any], shown: dict[str, Any] | None = None) -> None:
        """Append ``row`` and print it (or ``shown``, a shorter view of it)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row if shown is None else shown), flush=True)
