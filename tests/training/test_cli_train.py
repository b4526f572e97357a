"""`embrecycle train / predict / evaluate` end to end on a tiny model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from typer.testing import CliRunner

from embrecycle.cli import app

runner = CliRunner()


def _train_args(model: str, data: dict[str, Path], out: Path) -> list[str]:
    return [
        "train",
        "--model",
        model,
        "--layer",
        "2",
        "--train",
        str(data["train"]),
        "--dev",
        str(data["dev"]),
        "--out",
        str(out),
    ]


def test_train_predict_evaluate(tiny_bert_dir, toy_classification, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    run, cache = tmp_path / "run", tmp_path / "cache"
    args = [*_train_args(tiny_bert_dir, toy_classification, run), "--task", "classification", "--cache", str(cache)]
    args += ["--format", "jsonl", "--max-grad-norm", "0.5", "--truncation", "error"]
    r = runner.invoke(app, [*args, "--epochs", "1", "--batch-size", "8", "-q"])
    assert r.exit_code == 0, r.output
    assert "recycle (cpu, fp32" in r.output and "best dev" in r.output and (run / "model.safetensors").exists()
    assert "it/s" not in r.stderr and "%|" not in r.stderr  # -q: no progress bars, no weight-loading bars
    saved = json.loads((run / "run.json").read_text())["train_config"]
    assert (saved["data_format"], saved["max_grad_norm"], saved["truncation"]) == ("jsonl", 0.5, "error")
    assert (saved["epochs"], saved["lr"], saved["upper_options"]["lora_r"]) == (1, None, 8)  # dataclass defaults
    assert json.loads((run / "metrics.json").read_text())["lr"] == 3e-4  # the mode's default

    new = tmp_path / "new.txt"
    new.write_text("the protein of the method\n\ndisease in our results\n")
    preds = tmp_path / "preds"
    r = runner.invoke(app, ["predict", "--run", str(run), "--data", str(new), "--out", str(preds)])
    assert r.exit_code == 0, r.output
    assert "2 cache hits" not in r.output and "0 cache hits, 2 misses" in r.output and "1 empty skipped" in r.output
    assert f"-> {preds / 'run.jsonl'}:" in r.output
    rows = [json.loads(line) for line in (preds / "run.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and rows[0]["label"] in ("protein", "disease") and rows[1]["skipped"]
    r = runner.invoke(
        app, ["predict", "--run", str(run), "--data", str(new), "--out", str(preds), "--update-cache", "--overwrite"]
    )
    assert "2 added to the cache" in r.output
    r = runner.invoke(app, ["predict", "--run", str(run), "--data", str(new), "--out", str(preds)])
    assert r.exit_code == 2 and "already holds run.jsonl: pass --overwrite" in r.output  # before any work
    r = runner.invoke(app, ["predict", "--run", str(run), "--data", str(new), "--out", str(preds), "--overwrite"])
    assert "2 cache hits, 0 misses" in r.output

    r = runner.invoke(app, ["evaluate", "--run", str(run), "--data", str(toy_classification["dev"]), "--json"])
    assert r.exit_code == 0, r.output
    metrics = json.loads(r.stdout)
    assert set(metrics) >= {"accuracy", "macro_f1", "cache_hits", "cache_misses"} and metrics["cache_misses"] == 0

    # --out is a directory whatever the number of runs: one RUN_NAME.jsonl each
    shutil.copytree(run, tmp_path / "twin")
    both = tmp_path / "both"
    r = runner.invoke(
        app, ["predict", "--run", str(run), "--run", str(tmp_path / "twin"), "--data", str(new), "--out", str(both)]
    )
    assert r.exit_code == 0, r.output
    assert "3 documents x 2 task(s)" in r.output and "(run.jsonl, twin.jsonl)" in r.output
    assert (both / "run.jsonl").read_text() == (both / "twin.jsonl").read_text() == (preds / "run.jsonl").read_text()
    r = runner.invoke(app, ["predict", "--run", str(run), "--data", str(new), "--out", str(new)])
    assert r.exit_code == 2 and "names a directory" in r.output


def test_bad_train_settings_exit_2(tiny_bert_dir, toy_classification, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    base = _train_args(tiny_bert_dir, toy_classification, tmp_path / "run")
    r = runner.invoke(app, [*base, "--task", "qa"])
    assert r.exit_code == 2 and "task='qa'" in r.output and "classification" in r.output
    r = runner.invoke(app, [*base, "--task", "classification", "--epochs", "0"])
    assert r.exit_code == 2 and "epochs=0" in r.output
    r = runner.invoke(app, ["evaluate", "--run", str(tmp_path / "nope"), "--data", str(toy_classification["dev"])])
    assert r.exit_code == 2 and "run.json is missing" in r.output


def test_train_init_from_a_run(tiny_bert_dir, toy_classification, toy_ner, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    first, second = tmp_path / "first", tmp_path / "second"
    quick = ["--task", "classification", "--cache", str(tmp_path / "cache"), "--epochs", "1", "--batch-size", "8", "-q"]
    r = runner.invoke(app, [*_train_args(tiny_bert_dir, toy_classification, first), *quick])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, [*_train_args(tiny_bert_dir, toy_classification, second), *quick, "--init-from", str(first)])
    assert r.exit_code == 0, r.output
    assert json.loads((second / "run.json").read_text())["train_config"]["init_from"] == str(first)
    r = runner.invoke(
        app, [*_train_args(tiny_bert_dir, toy_ner, tmp_path / "ner"), "--task", "ner", "--init-from", str(first)]
    )
    assert r.exit_code == 2 and "init_from=" in r.output and "same base model, task and label set" in r.output
