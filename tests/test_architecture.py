"""Rules of the package's structure that a refactoring must not undo (the import layers are import-linter's)."""

from __future__ import annotations

import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "embrecycle"
MODE_NAMES = "full|head|lora|adapter|full-finetune|lora-text|recycle|all"
MODE_COMPARISON = re.compile(rf'(==|!=)\s*"({MODE_NAMES})"|"({MODE_NAMES})"\s*(==|!=)|\bin \(\s*"({MODE_NAMES})"\s*,')


def _sources(skip: set[str]) -> dict[str, str]:
    return {
        str(p.relative_to(SRC)): p.read_text(encoding="utf-8")
        for p in sorted(SRC.rglob("*.py"))
        if str(p.relative_to(SRC)) not in skip
    }


def test_run_metadata_is_read_through_the_run_record_only() -> None:
    offenders = [name for name, text in _sources({"run_record.py"}).items() if re.search(r"\bmeta(\[|\.get\()", text)]
    assert offenders == [], f"untyped run metadata lookups in {offenders}: use embrecycle.run_record.RunRecord"


def test_training_modes_are_compared_only_in_the_registry() -> None:
    offenders = [
        f"{name}:{text[: m.start()].count(chr(10)) + 1}"
        for name, text in _sources({"modes.py"}).items()
        for m in MODE_COMPARISON.finditer(text)
    ]
    assert offenders == [], f"mode names compared outside embrecycle.modes: {offenders}; ask the TrainingMode instead"
