"""Sweeps over one cache: every combination trained, the leaderboard and plot written, resumed after a cut."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from embrecycle import ConfigError, RunExistsError, load, sweep
from embrecycle.cli import app
from embrecycle.split import SplitEncoder
from embrecycle.sweep import sweep_values
from embrecycle.training import TrainConfig


def _config(tmp_path: Path, model: str, data: dict[str, Path], **kw: Any) -> TrainConfig:
    return TrainConfig(
        task=kw.pop("task", "classification"),
        model=model,
        layer=2,
        train=str(data["train"]),
        dev=str(data["dev"]),
        out=str(tmp_path / kw.pop("name", "sweep")),
        cache=str(tmp_path / "cache"),
        epochs=kw.pop("epochs", 1),
        batch_size=8,
        precision="fp32",
        **kw,
    )


def test_a_sweep_trains_every_combination_over_one_cache_and_resumes(
    tiny_bert_dir: str, toy_classification: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lower_calls = []
    original = SplitEncoder.lower

    def counting(self: SplitEncoder, *a: Any, **kw: Any) -> Any:
        lower_calls.append(1)
        return original(self, *a, **kw)

    monkeypatch.setattr(SplitEncoder, "lower", counting)
    cfg = _config(tmp_path, tiny_bert_dir, toy_classification)
    result = sweep(cfg, lr=[1e-3, 3e-3], seed=[1, 2], progress=False)

    out = Path(cfg.out)
    names = sorted(p.name for p in (out / "runs").iterdir())
    assert names == [f"full-lr{lr}-seed{s}" for lr in ("0.001", "0.003") for s in (1, 2)]
    assert result.trained == 4 and len(result.runs) == 4
    builds = len(lower_calls)
    assert builds > 0 and all(r.cache_build_seconds >= 0 for r in result.runs)
    # the lower layers ran during the first run only (every later run found its documents in the cache)
    assert lower_calls and sum(1 for r in result.runs[1:] if r.cache_build_seconds > 5) == 0

    board = json.loads((out / "leaderboard.json").read_text())
    assert len(board["rows"]) == 2 and board["runs_finished"] == 4
    assert board["best"]["mean"] == max(row["mean"] for row in board["rows"])
    assert board["rows"][0]["best"] and sorted(board["rows"][0]["seeds"]) == [1, 2]
    assert board["full_finetune_seconds_estimate"] > 0
    md = (out / "leaderboard.md").read_text()
    assert "★" in md and "± " in md and (out / "sweep.png").stat().st_size > 1000
    assert "sweep: best full, lr" in result.summary() and "full fine-tuning" in result.summary()
    assert load(result.runs[0].run_dir).predict(["protein a the"])[0]["label"] in (
        "protein",
        "disease",
    )  # each run is a normal run directory

    # cut off: one run lost, one left unfinished -> the second call trains only those
    shutil.rmtree(out / "runs" / "full-lr0.001-seed2")
    lower_before = len(lower_calls)
    again = sweep(cfg, lr=[1e-3, 3e-3], seed=[1, 2], progress=False, compare_full_finetune=False)
    assert again.trained == 1 and sum(r.kept for r in again.runs) == 3
    assert len(lower_calls) == lower_before  # the cache already held every document
    assert json.loads((out / "leaderboard.json").read_text())["runs_finished"] == 4


def test_a_sweep_over_modes_uses_each_modes_default_learning_rate(
    tiny_bert_dir: str, toy_classification: dict[str, Path], tmp_path: Path
) -> None:
    cfg = _config(tmp_path, tiny_bert_dir, toy_classification, epochs=1)
    result = sweep(cfg, upper=["full", "lora"], progress=False, compare_full_finetune=False)
    assert {(r.upper, r.lr) for r in result.runs} == {("full", 3e-4), ("lora", 3e-3)}


def test_a_sweep_refuses_bad_values_and_other_settings(
    tiny_bert_dir: str, toy_classification: dict[str, Path], tmp_path: Path
) -> None:
    cfg = _config(tmp_path, tiny_bert_dir, toy_classification, epochs=1)
    with pytest.raises(ConfigError, match=r"lr repeats \['0.001'\]"):
        sweep_values(cfg, {"lr": [1e-3, 1e-3]})
    with pytest.raises(ConfigError, match=r"the same run \['full-lr0.0003-seed42'\]"):
        sweep(cfg, lr=[None, 3e-4], progress=False)
    with pytest.raises(ConfigError, match="lr=-1"):
        sweep(cfg, lr=[1e-3, -1.0], progress=False)
    assert not Path(cfg.out).exists()  # checked before anything was made
    with pytest.raises(ConfigError, match="baseline"):
        sweep_values(TrainConfig.from_dict({**cfg.to_dict(), "baseline": "full-finetune"}), {"upper": ["full", "lora"]})
    sweep(cfg, lr=[1e-3], progress=False, compare_full_finetune=False)
    other = TrainConfig.from_dict({**cfg.to_dict(), "epochs": 2})
    with pytest.raises(ConfigError, match="epochs: 1 -> 2"):
        sweep(other, lr=[1e-3], progress=False)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    with pytest.raises(RunExistsError, match="not a sweep directory"):
        sweep(TrainConfig.from_dict({**cfg.to_dict(), "out": str(tmp_path / "taken")}), lr=[1e-3], progress=False)


def test_cli_train_with_several_values_runs_a_sweep(
    tiny_bert_dir: str, toy_classification: dict[str, Path], tmp_path: Path
) -> None:
    args = ["train", "--task", "classification", "--model", tiny_bert_dir, "--layer", "2",
            "--train", str(toy_classification["train"]), "--dev", str(toy_classification["dev"]),
            "--cache", str(tmp_path / "cache"), "--epochs", "1", "--batch-size", "8", "--precision", "fp32",
            "-q"]  # fmt: skip
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "s"), "--lr", "1e-3,3e-3", "--seed", "1"])
    assert result.exit_code == 0, result.output
    assert "sweep: best full" in result.output
    assert (tmp_path / "s" / "leaderboard.md").exists() and len(list((tmp_path / "s" / "runs").iterdir())) == 2
    bad = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "t"), "--lr", "1e-3,fast"])
    assert bad.exit_code == 2 and "--lr" in bad.output and "'fast'" in bad.output
