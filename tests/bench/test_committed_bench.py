"""The committed benchmark results are what `make bench` makes: its settings, its subsets, the README's table.

`make bench` resumes from the runs kept under ``benchmarks/results/bench-runs``: with the Makefile's
settings every kept run must be found again (not retrained), so the settings each (model, dataset)
was run with must equal what the Makefile asks for, down to the seeded data subsets. The README's
table must be the one the committed results render.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
from pathlib import Path
from typing import Any

import pytest

from embrecycle.bench.config import BenchConfig
from embrecycle.bench.report import README_END, README_START, readme_block
from embrecycle.bench.runner import _settings, prepare_data
from shared_data import require_shared_data

ROOT = Path(__file__).resolve().parents[2]
RUNS = ROOT / "benchmarks" / "results" / "bench-runs"


def _makefile_options() -> dict[str, list[str]]:
    """Each model's `embrecycle bench` options in the Makefile's bench target, variables expanded."""
    text = ROOT.joinpath("Makefile").read_text().replace("\\\n", " ")
    variables = dict(re.findall(r"^([A-Z_]+)\s*:=\s*(.*)$", text, re.M))
    target = text.split("\nbench:", 1)[1].split("\n\n", 1)[0]
    options = {}
    for line in target.splitlines():
        if "embrecycle bench" not in line or "--model" not in line:
            continue
        line = re.sub(r"\$\$\(\$\(PAPER\)[^)]*\)", "", line.split("embrecycle bench", 1)[1])  # the datasets
        line = re.sub(r"\$\(([A-Z_]+)\)", lambda m: variables.get(m.group(1), m.group(0)), line)
        tokens = shlex.split(line)
        model = tokens[tokens.index("--model") + 1]
        options[model] = tokens
    return options


def _config(tokens: list[str], datasets: list[str]) -> BenchConfig:
    flags = {"--train-limit": "train_limit", "--dev-limit": "dev_limit", "--test-limit": "test_limit"}
    flags |= {"--epochs": "epochs", "--lr-steps": "lr_steps", "--out": "out", "--model": "models"}
    values: dict[str, Any] = {"datasets": datasets, "limits": [], "methods": []}
    i = 0
    while i < len(tokens):
        flag = tokens[i]
        if flag == "--no-memory":
            values["memory"] = False
        elif flag == "--limit":
            values["limits"].append(tokens[i + 1])
        elif flag == "--method":
            values["methods"].append(tokens[i + 1])
        elif flag in flags:
            value = tokens[i + 1]
            values[flags[flag]] = [value] if flag == "--model" else value if flag == "--out" else int(value)
        else:
            raise AssertionError(f"test does not know the Makefile's bench option {flag}")
        i += 1 if flag == "--no-memory" else 2
    if not values["methods"]:
        del values["methods"]
    return BenchConfig(**values)


def test_the_makefile_names_each_models_runs() -> None:
    options = _makefile_options()
    assert set(options) == {"minilm-l6", "mpnet-base"}
    for model, tokens in options.items():
        assert tokens[tokens.index("--out") + 1].endswith(f"bench-runs/{model}")
        assert "--lr-steps" in tokens and "chemprot:train=all" in tokens


@pytest.mark.integration
def test_make_bench_finds_every_kept_run_again(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import paper_datasets

    data = require_shared_data()
    kept = sorted(RUNS.glob("*/runs/*/*/settings.json"))
    if not kept:
        pytest.skip("no benchmark runs are committed yet")
    for model, tokens in _makefile_options().items():
        for marker in sorted((RUNS / model / "runs").glob("*/*/settings.json")):
            name = marker.parent.name
            config = _config(tokens, [paper_datasets.spec(n, data) for n in paper_datasets.TASKS])
            (ds,) = [d for d in config.bench_datasets() if d.name == name]
            settings = json.loads(marker.read_text())
            now = _settings(config, ds, prepare_data(config, tmp_path / model, ds))
            now["files"] = settings["files"] = [Path(f).name for f in now["files"]]  # where the data lives may differ
            assert now == settings, f"{marker}: `make bench` would not resume these runs"


def test_the_readme_shows_the_committed_results() -> None:
    results = ROOT / "benchmarks" / "results" / "bench.json"
    rows = json.loads(results.read_text())["rows"]
    readme = ROOT.joinpath("README.md").read_text()
    block = readme.split(README_START, 1)[1].split(README_END, 1)[0]
    assert readme_block(rows) in block, "README's benchmark table is stale: run `make bench-report`"
