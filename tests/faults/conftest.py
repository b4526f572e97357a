"""Shared by the fault suite: quiet weight loading, and every test's counts, kept where CI shows them.

Each test hands its counts to ``fault_counts(name, counts)``: they are printed as one line
(``make faults`` runs with ``-s``) and merged into ``fault-counts.json`` in pytest's base temporary
directory (``/tmp/pytest-of-$USER/pytest-N/``), written after every test, so a failing test keeps the
counts of the ones before it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping

import pytest

from embrecycle.progress import set_quiet

COUNTS_FILE = "fault-counts.json"

Record = Callable[[str, Mapping[str, object]], None]


@pytest.fixture(scope="module", autouse=True)
def _no_weight_loading_bars() -> Iterator[None]:
    set_quiet(True)
    yield
    set_quiet(False)


@pytest.fixture(scope="session")
def fault_counts(tmp_path_factory: pytest.TempPathFactory) -> Record:
    path = tmp_path_factory.getbasetemp() / COUNTS_FILE

    def record(name: str, counts: Mapping[str, object]) -> None:
        saved = json.loads(path.read_text()) if path.exists() else {}
        saved[name] = dict(counts)
        path.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")
        shown = ", ".join(f"{k}={v}" for k, v in sorted(counts.items()))
        print(f"\n[faults] {name}: {shown} (-> {path})")

    return record
