"""Train/test overlap: counts on crafted files, the command, two caches, and the warning of `train`."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from typer.testing import CliRunner

from embrecycle import BuildConfig, build_cache
from embrecycle.cli import app
from embrecycle.data.overlap import find_overlap, normalise
from embrecycle.data.readers import Example


def _jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": t, "label": "x"}) + "\n" for t in texts))
    return path


TRAIN = ["The cat sat on the mat.", "Proteins fold.", "A  dog\tbarked.", "Unique training text."]
TEST = ["The cat sat on the mat.", "a dog barked.", "PROTEINS FOLD.", "Something new.", "Proteins fold."]


def test_exact_and_normalised_overlap_are_counted_per_test_document() -> None:
    train = [Example(t, "x", f"train.jsonl:{i + 1}") for i, t in enumerate(TRAIN)]
    test = [Example(t, "x", f"test.jsonl:{i + 1}") for i, t in enumerate(TEST)]
    o = find_overlap(train, test)
    assert (o.train_documents, o.test_documents, o.exact, o.normalised) == (4, 5, 2, 4)
    assert [(e.test_source, e.train_source, e.exact) for e in o.examples] == [
        ("test.jsonl:1", "train.jsonl:1", True),
        ("test.jsonl:2", "train.jsonl:3", False),
        ("test.jsonl:3", "train.jsonl:2", False),
        ("test.jsonl:5", "train.jsonl:2", True),
    ]
    assert "4 of 5 test documents (80.0%) also occur in training (2 exactly, 2 after" in o.summary()
    words = find_overlap([Example(["EU", "rejects"], ["B-ORG", "O"], "a:1")], [Example(["eu", "rejects"], None, "b:1")])
    assert (words.exact, words.normalised) == (0, 1) and normalise(["A", " b"]) == "a b"
    assert not find_overlap(train, [Example("Nothing like it.", "x", "t:1")]).any
    blank = find_overlap([*train, Example("  ", "x", "train.jsonl:9")], [Example("\t", "x", "t:1")])
    assert not blank.any  # blank lines are never cached: not a leak


def test_the_overlap_command_on_files(tmp_path: Path) -> None:
    train, test = _jsonl(tmp_path / "train.jsonl", TRAIN), _jsonl(tmp_path / "test.jsonl", TEST)
    r = CliRunner().invoke(app, ["cache", "overlap", "--train", str(train), "--test", str(test)])
    assert r.exit_code == 0 and "4 of 5" in r.output and "test.jsonl:2" in r.output
    r = CliRunner().invoke(app, ["cache", "overlap", "--train", str(train), "--test", str(test), "--fail-on-overlap"])
    assert r.exit_code == 1
    clean = _jsonl(tmp_path / "clean.jsonl", ["Something new."])
    args = ["cache", "overlap", "--train", str(train), "--test", str(clean), "--fail-on-overlap", "--json"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0 and json.loads(r.output)["normalised"] == 0


def test_overlap_with_caches_uses_their_keys(tiny_bert_dir: str, texts: list[str], tmp_path: Path) -> None:
    build_cache(texts[:20], tmp_path / "train-cache", BuildConfig(model=tiny_bert_dir, layer=2), progress=False)
    build_cache(texts[15:30], tmp_path / "test-cache", BuildConfig(model=tiny_bert_dir, layer=2), progress=False)
    shared = len(set(texts[:20]) & set(texts[15:30]))
    run = CliRunner().invoke
    r = run(app, ["cache", "overlap", "--train", str(tmp_path / "train-cache"), "--test", str(tmp_path / "test-cache"),
                  "--json"])  # fmt: skip
    assert r.exit_code == 0 and json.loads(r.output)["exact"] == shared
    test_file = _jsonl(tmp_path / "test.jsonl", texts[15:30])
    r = run(app, ["cache", "overlap", "--train", str(tmp_path / "train-cache"), "--test", str(test_file), "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["exact"] == len([t for t in texts[15:30] if t in texts[:20]])
    assert json.loads(r.output)["normalisation_checked"] is False
    r = run(app, ["cache", "overlap", "--train", str(tmp_path / "train-cache"), "--test", str(test_file)])
    assert "exact copies only: a cache holds keys of the exact text" in r.output
    first = next(i for i, t in enumerate(texts[15:30]) if t in texts[:20])
    assert f"test.jsonl:{first + 1} = training key " in r.output and texts[15 + first][:30] in r.output
    train_file = _jsonl(tmp_path / "train.jsonl", texts[:20])
    r = run(app, ["cache", "overlap", "--train", str(train_file), "--test", str(tmp_path / "test-cache")])
    assert "= " + str(train_file) + ":" in r.output  # the training side is a file: its lines are named
    build_cache(texts[:5], tmp_path / "other", BuildConfig(model=tiny_bert_dir, layer=1), progress=False)
    r = run(app, ["cache", "overlap", "--train", str(tmp_path / "train-cache"), "--test", str(tmp_path / "other")])
    assert r.exit_code == 2 and "different settings" in r.output


def test_train_warns_when_dev_overlaps_training(
    tiny_bert_dir: str, toy_classification: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from embrecycle.training import TrainConfig, train

    cfg = TrainConfig(task="classification", model=tiny_bert_dir, layer=2, train=str(toy_classification["train"]),
                      dev=str(toy_classification["train"]), out=str(tmp_path / "run"), epochs=1, train_limit=16,
                      dev_limit=8)  # fmt: skip
    with caplog.at_level(logging.WARNING):
        train(cfg, progress=False)
    (warning,) = [r.getMessage() for r in caplog.records if "also occur in --train" in r.getMessage()]
    assert "dev scores overstate" in warning and "embrecycle cache overlap" in warning
