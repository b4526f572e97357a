"""The typed run record: strict JSON, one concept of the training mode, and runs written by 0.1.0 still load."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

import embrecycle
from embrecycle import ConfigError
from embrecycle.modes import MODES, UPPER_CHOICES, get_mode, resolve_mode
from embrecycle.run_record import RUN_FORMAT_VERSION, RunRecord, read_run_record

LEGACY = Path(__file__).parent / "fixtures" / "runs_v0_1_0"


def _legacy_copy(tmp_path: Path, name: str, model: str) -> Path:
    """A copy of a 0.1.0 run pointed at ``model`` (the fixture was made on a seed-0 tiny BERT elsewhere)."""
    run = tmp_path / name
    shutil.copytree(LEGACY / name, run)
    data = json.loads((run / "run.json").read_text())
    data["model"] = model
    (run / "run.json").write_text(json.dumps(data))
    return run


@pytest.mark.parametrize("name", ["recycle-full", "recycle-lora", "full-finetune"])
def test_runs_written_by_0_1_0_load_and_predict_as_they_did(name: str, tiny_bert_dir: str, tmp_path: Path) -> None:
    run = _legacy_copy(tmp_path, name, tiny_bert_dir)
    record = read_run_record(run)
    assert record.model == tiny_bert_dir and record.states.tokenizer == tiny_bert_dir and record.layer == 2
    assert record.mode == {"recycle-full": "full", "recycle-lora": "lora", "full-finetune": "full-finetune"}[name]
    expected = json.loads((LEGACY / "expected.json").read_text())
    preds = embrecycle.load(run).predict(expected["texts"], cache=None)
    for got, want in zip(preds.items, expected["probabilities"][name], strict=True):
        assert got is not None
        for label, p in want.items():
            assert got["probabilities"][label] == pytest.approx(p, abs=1e-6)


def test_record_round_trips_and_is_strict(tiny_bert_dir: str, tmp_path: Path) -> None:
    record = read_run_record(_legacy_copy(tmp_path, "recycle-lora", tiny_bert_dir))
    data = record.to_json()
    assert data["format_version"] == RUN_FORMAT_VERSION and data["method"] == "recycle"
    assert RunRecord.from_json(json.loads(json.dumps(data))) == record
    with pytest.raises(ConfigError, match=r"unknown keys \['colour'\]"):
        RunRecord.from_json({**data, "colour": "red"})
    with pytest.raises(ConfigError, match=r"missing keys \['states'\]"):
        RunRecord.from_json({k: v for k, v in data.items() if k != "states"})
    with pytest.raises(ConfigError, match=r"run format version 99.*Re-create the run with `embrecycle train`"):
        RunRecord.from_json({**data, "format_version": 99})
    with pytest.raises(ConfigError, match="unknown training mode 'prefix'"):
        RunRecord.from_json({**data, "mode": "prefix"})
    legacy = json.loads((LEGACY / "recycle-full" / "run.json").read_text())
    with pytest.raises(ConfigError, match=r"unknown keys \['extra'\]"):
        RunRecord.from_json({**legacy, "extra": 1})
    with pytest.raises(ConfigError, match="unknown method 'distil'"):
        RunRecord.from_json({**legacy, "method": "distil"})


def test_unreadable_record_names_the_fix(tmp_path: Path) -> None:
    (tmp_path / "run.json").write_text('{"format": "embrecycle-run", ')
    with pytest.raises(ConfigError, match=r"cannot read .*run\.json.*Re-create the run"):
        read_run_record(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"run\.json is missing"):
        read_run_record(tmp_path / "nothing")


def test_state_differences_name_every_setting(tiny_bert_dir: str, tmp_path: Path) -> None:
    record = read_run_record(_legacy_copy(tmp_path, "recycle-full", tiny_bert_dir))
    other = dataclasses.replace(
        record, states=dataclasses.replace(record.states, layer=3, max_length=32, dtype="float32")
    )
    assert record.state_differences(record) == []
    assert [d.split(":")[0] for d in record.state_differences(other)] == ["layer", "max_length"]  # dtype may differ


def test_the_mode_registry_is_the_one_place_modes_are_defined() -> None:
    assert set(UPPER_CHOICES) | {"full-finetune", "lora-text"} == set(MODES)
    assert resolve_mode("lora", None).name == "lora" and resolve_mode("full", "lora").name == "lora-text"
    assert resolve_mode("head", "full-finetune").trains_lower
    assert {m.method for m in MODES.values()} == {"recycle", "full-finetune", "lora"}
    assert [m.name for m in MODES.values() if not m.exportable] == ["adapter"]
    assert all(m.from_text == (m.baseline is not None) for m in MODES.values())
    assert get_mode("lora-text").layer_for(3) == 0 and get_mode("full").layer_for(3) == 3
    with pytest.raises(ConfigError, match="upper='prefix'"):
        resolve_mode("prefix", None)
    with pytest.raises(ConfigError, match="baseline='distil'"):
        resolve_mode("full", "distil")
