"""The README and docs/ show only commands and options the CLI has (docs/cli.md itself is generated and tested)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from embrecycle.cli import app
from embrecycle.cli_options import walk

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _command_lines(path: Path) -> list[str]:
    """Every ``embrecycle ...`` command of the file's shell blocks, continuation lines joined, comments dropped."""
    lines, block = [], False
    for raw in path.read_text(encoding="utf-8").splitlines():
        if raw.startswith("```"):
            block = raw.strip() in ("```bash", "```sh", "```shell", "```console")
            continue
        if block:
            lines.append(raw)
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    out = []
    for line in joined.splitlines():
        line = line.split(" #")[0].strip().removeprefix("$ ")
        if line.startswith("embrecycle "):
            out.append(line)
    return out


def _flags(entry: object) -> set[str]:
    return {o for p in entry.click_command.params for o in [*p.opts, *p.secondary_opts]}  # type: ignore[attr-defined]


COMMANDS = {e.path: e for e in walk(app)}


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_documented_commands_use_real_options(path: Path) -> None:
    problems = []
    for line in _command_lines(path):
        words = line.split()[1:]
        name = " ".join(words[:2]) if " ".join(words[:2]) in COMMANDS else words[0] if words else ""
        if name not in COMMANDS:
            if not line.strip().endswith(("--version", "--help")):
                problems.append(f"{line!r}: no command {name!r}")
            continue
        flags = _flags(COMMANDS[name])
        used = {w.strip("[]()|").split("=")[0] for w in words if w.strip("[]()|").startswith("-")}
        unknown = sorted(f for f in used if f not in flags and f not in ("--help", "..."))
        if unknown:
            problems.append(f"{line!r}: {name} has no {unknown}")
    assert problems == [], "\n".join(problems)


def test_the_readme_shows_commands() -> None:
    assert len(_command_lines(ROOT / "README.md")) >= 10
