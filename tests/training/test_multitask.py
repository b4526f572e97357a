"""Several tasks over one corpus: a shared pass equals separate predictions; frozen weights are held once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import embrecycle
from embrecycle import ConfigError
from embrecycle.cli import app
from embrecycle.multitask import TaskSet
from embrecycle.training import TrainConfig, train


def _run(tmp_path: Path, model: str, data: dict[str, Path], name: str, task: str = "classification", **kw: Any) -> str:
    cfg = TrainConfig(
        task=task,
        model=model,
        layer=kw.pop("layer", 2),
        train=str(data["train"]),
        dev=str(data["dev"]),
        out=str(tmp_path / name),
        cache=str(tmp_path / kw.pop("cache", "cache")),
        epochs=1,
        lr=1e-2,
        batch_size=8,
        **kw,
    )
    return train(cfg, progress=False).run_dir


@pytest.fixture(scope="module")
def runs(
    tiny_bert_dir: str,
    toy_classification: dict[str, Path],
    toy_ner: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, str]:
    d = tmp_path_factory.mktemp("runs")
    return {
        "full": _run(d, tiny_bert_dir, toy_classification, "full"),
        "lora": _run(d, tiny_bert_dir, toy_classification, "lora", upper="lora", seed=3),
        "adapter": _run(d, tiny_bert_dir, toy_classification, "adapter", upper="adapter", seed=4),
        "head": _run(d, tiny_bert_dir, toy_classification, "head", upper="head", seed=5),
        "ner": _run(d, tiny_bert_dir, toy_ner, "ner", task="ner"),
        "k1": _run(d, tiny_bert_dir, toy_classification, "k1", layer=1, cache="cache-k1"),
        "cache": str(d / "cache"),
    }


DOCS = ["the protein of the method", "disease in our results", "", "we and the data of a model"]


def test_shared_pass_equals_separate_predictions(runs: dict[str, str]) -> None:
    names = ["full", "lora", "adapter", "head", "ner"]
    tasks = TaskSet.load([runs[n] for n in names])
    together = tasks.predict(DOCS, cache=runs["cache"])
    assert list(together) == names
    for name in names:
        alone = embrecycle.load(runs[name]).predict(DOCS, cache=runs["cache"])
        got = together[name]
        assert (got.hits, got.misses, got.skipped_empty) == (alone.hits, alone.misses, alone.skipped_empty)
        for a, b in zip(alone.items, got.items, strict=True):
            if a is None:
                assert b is None
            elif "label" in a:
                assert a["label"] == b["label"]
                assert max(abs(a["probabilities"][k] - b["probabilities"][k]) for k in a["probabilities"]) < 1e-6
            else:
                assert a == b


def test_frozen_weights_are_held_once(runs: dict[str, str]) -> None:
    names = ("head", "lora", "adapter")
    separate = sum(TaskSet.load([runs[n]], merge_lora=False).parameter_bytes() for n in names)
    shared = TaskSet.load([runs[n] for n in names], merge_lora=False)
    one = TaskSet.load([runs["head"]]).parameter_bytes()
    assert shared.shared_parameters > 0
    # the three parameter-efficient runs cost one base model plus what the other two trained (and their buffers)
    extra = 0
    for m in shared.models[1:]:
        extra += sum(p.numel() * p.element_size() for p in m.model.parameters() if p.requires_grad)
        extra += sum(b.numel() * b.element_size() for b in m.model.buffers())
    assert one < shared.parameter_bytes() == one + extra < separate


def test_runs_of_other_layers_or_baselines_are_refused(
    runs: dict[str, str], tiny_bert_dir: str, toy_classification: dict[str, Path], tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=r"layer: 2 vs 1"):
        TaskSet.load([runs["full"], runs["k1"]])
    base = _run(tmp_path, tiny_bert_dir, toy_classification, "ft", baseline="full-finetune")
    with pytest.raises(ConfigError, match="baselines"):
        TaskSet.load([runs["full"], base])
    with pytest.raises(ConfigError, match="appear twice"):
        TaskSet.load([runs["full"], runs["full"]])


def test_cli_predicts_several_runs_into_a_directory(runs: dict[str, str], tmp_path: Path) -> None:
    data = tmp_path / "docs.txt"
    data.write_text("\n".join(DOCS) + "\n")
    out = tmp_path / "preds"
    args = ["predict", "--run", runs["full"], "--run", runs["lora"], "--data", str(data), "--out", str(out)]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "x 2 task(s)" in r.output
    for name in ("full", "lora"):
        rows = [json.loads(line) for line in (out / f"{name}.jsonl").read_text().splitlines()]
        assert len(rows) == 4 and rows[0]["label"] in ("protein", "disease")
    r = CliRunner().invoke(
        app, ["predict", "--run", runs["full"], "--run", runs["k1"], "--data", str(data), "--out", str(tmp_path / "o2")]
    )
    assert r.exit_code == 2 and "layer: 2 vs 1" in r.output
    mixed = ["predict", "--run", runs["full"], "--run", runs["ner"], "--data", str(data), "--out", str(tmp_path / "o3")]
    r = CliRunner().invoke(app, mixed)  # one TaskSet may mix them, one data file may not: word lists vs texts
    assert r.exit_code == 2 and "cannot feed NER and classification" in r.output and "ner: ner" in r.output


def test_shareability_is_checked_from_the_records_alone(runs: dict[str, str]) -> None:
    from embrecycle.multitask import check_shareable
    from embrecycle.run_record import read_run_record

    def records(*names: str) -> list[tuple[Path, Any]]:
        return [(Path(runs[n]), read_run_record(runs[n])) for n in names]

    check_shareable(records("full", "lora", "ner"))  # no weights loaded
    with pytest.raises(ConfigError, match="cannot feed NER and classification"):
        check_shareable(records("full", "ner"), one_input_kind=True)
    with pytest.raises(ConfigError, match=r"layer: 2 vs 1"):
        check_shareable(records("full", "k1"))
    with pytest.raises(ConfigError, match="at least one run"):
        check_shareable([])


def test_merged_lora_predicts_as_trained_and_still_shares_the_lower_layers(runs: dict[str, str]) -> None:
    from peft.tuners.lora import LoraLayer

    names = ["head", "lora"]
    merged = TaskSet.load([runs[n] for n in names])
    apart = TaskSet.load([runs[n] for n in names], merge_lora=False)
    lora = merged.models[1].model
    assert not any(isinstance(m, LoraLayer) for m in lora.modules())
    assert any(isinstance(m, LoraLayer) for m in apart.models[1].model.modules())
    a, b = merged.predict(DOCS, cache=runs["cache"]), apart.predict(DOCS, cache=runs["cache"])
    for x, y in zip(a["lora"].items, b["lora"].items, strict=True):
        if x is None:
            assert y is None
            continue
        assert x["label"] == y["label"]
        assert max(abs(x["probabilities"][k] - y["probabilities"][k]) for k in x["probabilities"]) < 1e-5
    # the lower layers are held once; the merged run holds its own upper layers
    lower = {id(p) for m in merged.models[0].model.split.lower_modules().values() for p in m.parameters()}
    assert lower and lower <= {id(p) for p in lora.parameters()}
    assert apart.parameter_bytes() < merged.parameter_bytes()
