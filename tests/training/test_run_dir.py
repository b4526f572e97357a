"""Run directories: published whole, never overwritten by accident, refused while unfinished, resumable exactly."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

import embrecycle
from embrecycle import (
    ConfigError,
    DiskFullError,
    IncompleteRunError,
    RunCorruptedError,
    RunExistsError,
    TaskSet,
    export_run,
)
from embrecycle.run_dir import INCOMPLETE_MARKER, RESUME_FILE, staging_dir
from embrecycle.training import TrainConfig, train
from embrecycle.training import loop as training_loop


def _config(tmp_path: Path, model: str, data: dict[str, Path], **kw: Any) -> TrainConfig:
    return TrainConfig(
        task=kw.pop("task", "classification"),
        model=model,
        layer=kw.pop("layer", 2),
        train=str(data["train"]),
        dev=str(data["dev"]),
        out=str(tmp_path / kw.pop("name", "run")),
        cache=str(tmp_path / "cache"),
        epochs=kw.pop("epochs", 2),
        lr=1e-3,
        batch_size=8,
        **kw,
    )


REAL_SAVE = training_loop.save_resume_state


def _no_interrupt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(training_loop, "save_resume_state", REAL_SAVE)


class Interrupted(Exception):
    """Stands for a kill in the middle of training (the process would stop here)."""


def _interrupt_after_saves(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    """Make training stop right after its n-th resume state was written (as a kill then would);
    :func:`_no_interrupt` ends it (``monkeypatch.undo()`` would also undo conftest's precision pin)."""
    real = REAL_SAVE
    calls = {"n": 0}

    def save_then_maybe_stop(*args: Any, **kwargs: Any) -> None:
        real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == n:
            raise Interrupted

    monkeypatch.setattr(training_loop, "save_resume_state", save_then_maybe_stop)


def test_a_finished_run_is_published_whole(tiny_bert_dir: str, toy_classification: dict, tmp_path: Path) -> None:
    result = train(_config(tmp_path, tiny_bert_dir, toy_classification), progress=False)
    run = Path(result.run_dir)
    assert run == tmp_path / "run" and not staging_dir(run).exists()
    assert not (run / INCOMPLETE_MARKER).exists() and not (run / RESUME_FILE).exists()
    mask = os.umask(0)
    os.umask(mask)
    for name in ("run.json", "labels.json", "metrics.json", "model.safetensors"):
        assert (run / name).stat().st_mode & 0o777 == 0o666 & ~mask, name  # the umask's, not 0600


def test_an_existing_run_is_replaced_only_with_overwrite(
    tiny_bert_dir: str, toy_classification: dict, tmp_path: Path
) -> None:
    first = train(_config(tmp_path, tiny_bert_dir, toy_classification, epochs=1), progress=False)
    before = (Path(first.run_dir) / "model.safetensors").read_bytes()
    with pytest.raises(RunExistsError, match="--overwrite"):
        train(_config(tmp_path, tiny_bert_dir, toy_classification, epochs=1, seed=7), progress=False)
    assert (Path(first.run_dir) / "model.safetensors").read_bytes() == before  # untouched
    train(_config(tmp_path, tiny_bert_dir, toy_classification, epochs=1, seed=7, overwrite=True), progress=False)
    assert (Path(first.run_dir) / "model.safetensors").read_bytes() != before
    assert not list(tmp_path.glob(".run.replaced-*")) and not staging_dir(tmp_path / "run").exists()


def test_resume_and_overwrite_exclude_each_other(tiny_bert_dir: str, toy_classification: dict, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="resume and overwrite"):
        _config(tmp_path, tiny_bert_dir, toy_classification, resume=True, overwrite=True)


def test_nothing_to_resume_is_said(tiny_bert_dir: str, toy_classification: dict, tmp_path: Path) -> None:
    with pytest.raises(IncompleteRunError, match="nothing to resume"):
        train(_config(tmp_path, tiny_bert_dir, toy_classification, resume=True), progress=False)
    train(_config(tmp_path, tiny_bert_dir, toy_classification, epochs=1), progress=False)
    with pytest.raises(IncompleteRunError, match="is finished"):
        train(_config(tmp_path, tiny_bert_dir, toy_classification, epochs=1, resume=True), progress=False)


def test_an_interrupted_run_is_refused_by_every_reader(
    tiny_bert_dir: str, toy_classification: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _interrupt_after_saves(monkeypatch, 1)
    with pytest.raises(Interrupted):
        train(_config(tmp_path, tiny_bert_dir, toy_classification), progress=False)
    run, stage = tmp_path / "run", staging_dir(tmp_path / "run")
    assert not run.exists() and (stage / "model.safetensors").exists() and (stage / INCOMPLETE_MARKER).exists()
    for where in (run, stage):
        with pytest.raises(IncompleteRunError, match="--resume"):
            embrecycle.load(where)
        with pytest.raises(IncompleteRunError, match="--resume"):
            TaskSet.load([where])
        with pytest.raises(IncompleteRunError):
            export_run(where, tmp_path / "exported")
        with pytest.raises(IncompleteRunError):
            train(_config(tmp_path, tiny_bert_dir, toy_classification, name="warm", init_from=str(where)))
    with pytest.raises(RunExistsError, match="--resume"):  # a plain re-run does not silently start over
        train(_config(tmp_path, tiny_bert_dir, toy_classification), progress=False)


def test_a_staging_directory_killed_before_its_marker_is_started_over(
    tiny_bert_dir: str, toy_classification: dict, tmp_path: Path
) -> None:
    stage = staging_dir(tmp_path / "run")
    stage.mkdir()
    (stage / f".{INCOMPLETE_MARKER}.x1y2.tmp").write_text("{}")  # killed before the marker's rename
    result = train(_config(tmp_path, tiny_bert_dir, toy_classification, epochs=1, resume=True), progress=False)
    assert not result.resumed and not stage.exists()  # nothing had been trained: it started over, and finished
    assert embrecycle.load(tmp_path / "run").record.labels


def test_the_cli_readers_refuse_an_unfinished_run_with_exit_2(
    tiny_bert_dir: str, toy_classification: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from embrecycle.cli import app

    _interrupt_after_saves(monkeypatch, 1)
    with pytest.raises(Interrupted):
        train(_config(tmp_path, tiny_bert_dir, toy_classification), progress=False)
    _no_interrupt(monkeypatch)
    data, out = str(toy_classification["dev"]), tmp_path / "out"
    for where in (tmp_path / "run", staging_dir(tmp_path / "run")):
        for args in (
            ["predict", "--run", str(where), "--data", data, "--out", str(out)],
            ["evaluate", "--run", str(where), "--data", data],
            ["export", "--run", str(where), "--out", str(out / "exported")],
        ):
            r = CliRunner().invoke(app, [*args, "--device", "cpu", "-q"])
            assert r.exit_code == 2, (args, r.output)
            assert "did not finish training" in r.output or "staging directory" in r.output, r.output
            assert "--resume" in r.output and "Traceback" not in r.output, r.output
            assert not [p for p in out.rglob("*") if p.is_file()]  # nothing predicted or exported


@pytest.mark.parametrize("name", ["model.safetensors", "metrics.json", "labels.json"])
def test_a_file_from_another_run_is_refused_and_named(
    tiny_bert_dir: str, toy_classification: dict, tmp_path: Path, name: str
) -> None:
    a = Path(train(_config(tmp_path, tiny_bert_dir, toy_classification, name="a", epochs=1), progress=False).run_dir)
    b_data = {**toy_classification, "train": tmp_path / "other-labels.jsonl", "dev": tmp_path / "other-labels.jsonl"}
    rows = [json.loads(line) for line in toy_classification["train"].read_text().splitlines()]
    b_data["train"].write_text("".join(json.dumps({**r, "label": r["label"].upper()}) + "\n" for r in rows))
    b = Path(train(_config(tmp_path, tiny_bert_dir, b_data, name="b", epochs=1, seed=7), progress=False).run_dir)
    assert (a / name).read_bytes() != (b / name).read_bytes()
    (a / name).write_bytes((b / name).read_bytes())  # a whole, valid file: but another run's
    pattern = name.replace(".", r"\.")
    with pytest.raises(RunCorruptedError, match=rf"{pattern} is damaged"):
        embrecycle.load(a)
    with pytest.raises(RunCorruptedError, match=pattern):
        TaskSet.load([a])


@pytest.mark.parametrize(
    ("task", "kw"),
    [("classification", {}), ("classification", {"save_every": 1}), ("ner", {"upper": "lora", "eval_every": 2})],
)
def test_resume_ends_with_the_weights_of_an_uninterrupted_run(
    task: str,
    kw: dict[str, Any],
    tiny_bert_dir: str,
    toy_classification: dict,
    toy_ner: dict,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = toy_classification if task == "classification" else toy_ner
    ref = train(_config(tmp_path, tiny_bert_dir, data, task=task, name="ref", epochs=3, **kw), progress=False)
    _interrupt_after_saves(monkeypatch, 2)
    with pytest.raises(Interrupted):
        train(_config(tmp_path, tiny_bert_dir, data, task=task, epochs=3, **kw), progress=False)
    _no_interrupt(monkeypatch)
    resumed = train(_config(tmp_path, tiny_bert_dir, data, task=task, epochs=3, resume=True, **kw), progress=False)
    assert resumed.resumed and resumed.history == ref.history and resumed.losses == ref.losses
    a, b = load_file(str(Path(ref.run_dir) / "model.safetensors")), load_file(str(tmp_path / "run/model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((tmp_path / "run/metrics.json").read_text())["resumed"] is True


def test_resume_refuses_other_settings(
    tiny_bert_dir: str, toy_classification: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _interrupt_after_saves(monkeypatch, 1)
    with pytest.raises(Interrupted):
        train(_config(tmp_path, tiny_bert_dir, toy_classification), progress=False)
    _no_interrupt(monkeypatch)
    with pytest.raises(ConfigError, match=r"lr: 0\.001 -> 0\.01"):
        cfg = _config(tmp_path, tiny_bert_dir, toy_classification, resume=True)
        cfg.lr = 1e-2
        train(cfg, progress=False)


def test_a_failed_start_leaves_nothing_behind(tiny_bert_dir: str, toy_classification: dict, tmp_path: Path) -> None:
    bad = dict(toy_classification, train=tmp_path / "missing.jsonl")
    with pytest.raises(embrecycle.InputDataError):
        train(_config(tmp_path, tiny_bert_dir, bad), progress=False)
    assert not staging_dir(tmp_path / "run").exists()  # the next attempt needs no --resume or --overwrite
    train(_config(tmp_path, tiny_bert_dir, toy_classification, epochs=1), progress=False)


def test_too_little_disk_fails_before_any_work(
    tiny_bert_dir: str, toy_classification: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    from embrecycle import files

    monkeypatch.setattr(files.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9, 1000))
    with pytest.raises(DiskFullError, match=r"needs about .* MB free"):
        train(_config(tmp_path, tiny_bert_dir, toy_classification), progress=False)
    assert not (tmp_path / "cache").exists()  # refused before the lower layers ran


def test_a_full_disk_while_training_is_a_clear_error(
    tiny_bert_dir: str, toy_classification: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from embrecycle import run as run_module

    def fills_up(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(run_module, "save_file", fills_up)
    with pytest.raises(DiskFullError, match=r"no space left on the device writing .*model\.safetensors"):
        train(_config(tmp_path, tiny_bert_dir, toy_classification), progress=False)
    assert not (tmp_path / "run").exists()  # nothing half-written was published
    assert not [p for p in tmp_path.rglob("*.tmp")]  # no temporary file left


def test_damaged_run_files_are_named(tiny_bert_dir: str, toy_classification: dict, tmp_path: Path) -> None:
    run = Path(train(_config(tmp_path, tiny_bert_dir, toy_classification, epochs=1), progress=False).run_dir)
    weights = run / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(RunCorruptedError, match=r"model\.safetensors is damaged"):  # the checksum in run.json
        embrecycle.load(run)
    from embrecycle.run_record import read_run_record

    weights.write_bytes(data)
    record = read_run_record(run)
    dataclasses.replace(record, files={}).write(run)  # a run without checksums: safetensors itself still tells
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(RunCorruptedError, match=r"model\.safetensors is truncated or damaged"):
        embrecycle.load(run)
    weights.unlink()
    with pytest.raises(RunCorruptedError, match=r"model\.safetensors is missing"):
        embrecycle.load(run)
    weights.write_bytes(data)
    record = (run / "run.json").read_text()
    (run / "run.json").write_text(record[: len(record) // 2])
    with pytest.raises(ConfigError, match=r"run\.json"):
        embrecycle.load(run)
    (run / "run.json").write_text(record)
    (run / "metrics.json").unlink()  # as a run killed by an older release would be
    with pytest.raises(IncompleteRunError, match=r"metrics\.json"):
        embrecycle.load(run)


def test_a_moved_base_model_can_be_repointed_by_hand(
    tiny_bert_dir: str, toy_classification: dict, tmp_path: Path
) -> None:
    import shutil

    run = Path(train(_config(tmp_path, tiny_bert_dir, toy_classification, epochs=1), progress=False).run_dir)
    moved = shutil.copytree(tiny_bert_dir, tmp_path / "moved-model")
    body = json.loads((run / "run.json").read_text())
    body["states"]["model"] = body["states"]["tokenizer"] = str(moved)  # what the format docs tell users to do
    (run / "run.json").write_text(json.dumps(body, indent=2))
    assert embrecycle.load(run).record.model == str(moved)
    body["labels"] = body["labels"][::-1]  # any other edit is damage
    (run / "run.json").write_text(json.dumps(body, indent=2))
    with pytest.raises(RunCorruptedError, match=r"run\.json is damaged"):
        embrecycle.load(run)
