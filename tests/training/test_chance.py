"""A run that learned nothing says so: chance levels, the flag in metrics.json, the summary and the CLI warning."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from embrecycle.cli import app
from embrecycle.data import read_examples
from embrecycle.data.readers import Example
from embrecycle.modes import HEAD_LR, MODES
from embrecycle.tasks import ClassificationTask, NerTask
from embrecycle.training import TrainConfig, train
from embrecycle.training.chance import chance_level


def _cls(labels: list[str]) -> list[Example]:
    return [Example(doc=f"doc {i}", label=label, source=f"x:{i}") for i, label in enumerate(labels)]


def test_the_constant_prediction_is_the_most_frequent_training_label() -> None:
    task = ClassificationTask(["a", "b", "c"])
    gold = ["a", "b", "c", "b"] * 10
    train, dev = _cls(["b", "b", "a", "c"]), _cls(gold)
    assert task.constant_predictions(train, dev) == ["b"] * 40
    perfect = chance_level(task, train, dev, gold)
    assert perfect.constant == pytest.approx(task.metrics(gold, ["b"] * 40)["macro_f1"])
    assert perfect.beaten_by(1.0) and not perfect.beaten_by(perfect.constant)


def test_shuffled_predictions_set_the_bar_for_a_classifier_that_spreads_its_guesses() -> None:
    task = ClassificationTask(["a", "b"])
    gold = ["a", "b"] * 50
    train, dev = _cls(gold), _cls(gold)
    guesses = ["a", "a", "b", "b"] * 25  # half right, whatever the document: macro-F1 0.5 > constant 0.33
    chance = chance_level(task, train, dev, guesses)
    score = task.metrics(gold, guesses)["macro_f1"]
    assert chance.constant < score and not chance.beaten_by(score)
    assert chance.beaten_by(task.metrics(gold, gold)["macro_f1"])


def test_a_tagger_that_tags_everything_o_is_no_better_than_chance() -> None:
    task = NerTask(["O", "B-Chem", "I-Chem"])
    dev = [Example(doc=["x", "y", "z"], label=["B-Chem", "O", "O"], source="x:1")] * 5
    chance = chance_level(task, dev, dev, [["O", "O", "O"]] * 5)
    assert chance.constant == 0.0 and chance.score == 0.0 and not chance.beaten_by(0.0)
    assert chance.beaten_by(1.0)


def test_every_mode_has_a_default_learning_rate_per_task(
    tiny_bert_dir: str, toy_classification: dict[str, Path]
) -> None:
    base = {"model": tiny_bert_dir, "layer": 2, "train": str(toy_classification["train"]),
            "dev": str(toy_classification["dev"]), "out": "unused"}  # fmt: skip
    for mode in MODES.values():
        for task in ("classification", "ner"):
            cfg = TrainConfig(task=task, upper=mode.upper if not mode.from_text else "full",
                              baseline=mode.baseline, **base)  # fmt: skip
            assert cfg.mode is mode and cfg.lr is None
            head = HEAD_LR if mode.name != "head" else mode.lr  # the head mode: the head is all that trains
            assert cfg.learning_rate == mode.lr.for_task(task) and cfg.head_learning_rate == head.for_task(task)
    assert MODES["full"].lr.classification > MODES["full-finetune"].lr.classification
    assert MODES["lora"].lr.classification > MODES["full"].lr.classification
    given = TrainConfig(task="classification", lr=2e-5, head_lr=1e-3, **base)
    assert (given.learning_rate, given.head_learning_rate) == (2e-5, 1e-3)
    # a head alone follows --lr (a sweep of --lr must move it); a head above trained layers keeps its own rate
    assert TrainConfig(task="ner", upper="head", lr=3e-3, **base).head_learning_rate == 3e-3
    assert TrainConfig(task="ner", upper="lora", lr=3e-3, **base).head_learning_rate == HEAD_LR.ner


def _noise_labels(src: Path, dst: Path) -> Path:
    """The training documents with labels that do not depend on them (the cue word decides the real label)."""
    rows = [{"text": e.doc, "label": ["protein", "disease"][(i // 2) % 2]} for i, e in enumerate(read_examples(src))]
    dst.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return dst


def test_a_run_on_labels_unrelated_to_the_text_says_it_learned_nothing(
    tiny_bert_dir: str, toy_classification: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    noise = _noise_labels(toy_classification["train"], tmp_path / "noise.jsonl")
    args = ["train", "--task", "classification", "--model", tiny_bert_dir, "--layer", "2", "--train", str(noise),
            "--dev", str(toy_classification["dev"]), "--cache", str(tmp_path / "cache"), "--epochs", "2",
            "--batch-size", "8", "--precision", "fp32", "--out", str(tmp_path / "run"), "-q"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["learned_nothing"] is True and metrics["chance_score"] >= metrics["constant_score"]
    assert metrics["best"]["macro_f1"] <= metrics["chance_score"] and metrics["lr"] == 3e-4
    assert "NO BETTER THAN CHANCE" in result.output
    (warning,) = [r.getMessage() for r in caplog.records if "learned nothing" in r.getMessage()]
    assert "--lr" in warning and "--epochs" in warning and "sweep" in warning


def test_a_run_that_learned_is_not_flagged(
    tiny_bert_dir: str, toy_classification: dict[str, Path], tmp_path: Path
) -> None:
    cfg = TrainConfig(task="classification", model=tiny_bert_dir, layer=2, train=str(toy_classification["train"]),
                      dev=str(toy_classification["dev"]), out=str(tmp_path / "run"), cache=str(tmp_path / "cache"),
                      epochs=8, lr=3e-3, head_lr=3e-3, batch_size=8, warmup_ratio=0.0, precision="fp32")  # fmt: skip
    result = train(cfg, progress=False)
    assert not result.learned_nothing and result.best["macro_f1"] > result.chance_score > 0.5
    assert "CHANCE" not in result.summary() and "lr 0.003" in result.summary()


def test_wider_models_train_above_the_cut_at_lower_default_rates(
    tmp_path: Path, toy_classification: dict[str, Path]
) -> None:
    """MPNet-base (768 wide) trained its upper layers best at a third of MiniLM-L6's (384) rates, and NER (WNUT) in
    every mode that trains layers from a pretrained start at a ninth; full fine-tuning and the head keep theirs."""
    from transformers import BertConfig

    from embrecycle.modes import on_ladder, width_scale

    models = {}
    for width, heads in ((384, 12), (768, 12), (1024, 16)):
        models[width] = tmp_path / f"bert-{width}"
        BertConfig(hidden_size=width, num_attention_heads=heads).save_pretrained(models[width])
    data = {"layer": 2, "train": str(toy_classification["train"]), "dev": str(toy_classification["dev"]),
            "out": "unused"}  # fmt: skip

    def default(width: int, task: str, upper: str = "full", baseline: str | None = None) -> float:
        return TrainConfig(task=task, model=str(models[width]), upper=upper, baseline=baseline, **data).learning_rate

    assert (default(768, "classification"), default(768, "ner")) == (1e-4, 1e-4)  # NER: sparse entities (WNUT)
    assert default(384, "ner") == MODES["full"].lr.ner == 1e-3  # the reference width keeps the measured rates
    assert default(384, "ner", "lora") == MODES["lora"].lr.ner == 3e-3
    assert (default(768, "classification", "lora"), default(768, "ner", "lora")) == (1e-3, 3e-4)
    assert (default(768, "classification", "adapter"), default(768, "ner", "adapter")) == (1e-3, 1e-3)
    assert (default(768, "classification", baseline="lora"), default(768, "ner", baseline="lora")) == (3e-4, 3e-4)
    assert default(768, "classification", "head") == MODES["head"].lr.classification  # a linear head: unscaled
    assert default(768, "ner", baseline="full-finetune") == MODES["full-finetune"].lr.ner
    assert default(1024, "classification") == default(1024, "ner") == 1e-4
    assert width_scale(1024) < width_scale(768) < 0.4
    assert width_scale(384) == width_scale(256) == width_scale(None) == 1.0  # narrower: the measured rates
    assert [on_ladder(x) for x in (3.54e-4, 1.06e-4, 6.9e-5, 2e-4, 1.5e-3)] == [3e-4, 1e-4, 1e-4, 3e-4, 1e-3]
    given = TrainConfig(task="classification", model=str(models[768]), lr=5e-4, **data)
    assert given.learning_rate == 5e-4  # --lr as given
