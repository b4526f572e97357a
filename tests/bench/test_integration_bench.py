"""`embrecycle bench --quick` on the real offline model and ../shared/data (the smoke run users start with)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from embrecycle.cli import app
from shared_data import require_shared_data

pytestmark = pytest.mark.integration


def test_quick_bench_on_real_data(tmp_path: Path) -> None:
    data = require_shared_data()
    t0 = time.perf_counter()
    datasets = ["--dataset", f"sci-cite=classification:{data / 'sci-cite'}"]
    datasets += ["--dataset", f"bc5cdr=ner:{data / 'bc5cdr'}"]
    r = CliRunner().invoke(app, ["bench", "--quick", *datasets, "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    seconds = time.perf_counter() - t0
    result = json.loads((tmp_path / "bench_quick.json").read_text())
    assert {row["method"] for row in result["rows"] if row["kind"] == "train"} >= {"full-finetune", "recycle-50"}
    report = (tmp_path / "bench_quick.md").read_text()
    assert "quick smoke run" in report and "| minilm-l6 | bc5cdr | recycle-50 |" in report
    print(f"quick bench: {seconds:.0f} s")
