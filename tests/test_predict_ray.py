"""``predict --engine ray``: a corpus of shards over a Ray Data actor pool equals local prediction, shard by shard."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest
from typer.testing import CliRunner

from embrecycle import InputDataError
from embrecycle.batch_predict import input_shards, predict_files_ray, prediction_lines
from embrecycle.cache.ray_engine import RayPool
from embrecycle.cli import app
from embrecycle.multitask import TaskSet
from embrecycle.training import TrainConfig, train


@pytest.fixture(scope="module")
def runs(
    tiny_bert_dir: str, toy_classification: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> list[str]:
    d = tmp_path_factory.mktemp("ray-runs")
    out = []
    for name, upper in (("topic", "full"), ("topic-lora", "lora")):
        cfg = TrainConfig(
            task="classification", model=tiny_bert_dir, layer=2, train=str(toy_classification["train"]),
            dev=str(toy_classification["dev"]), out=str(d / name), cache=str(d / "cache"), epochs=1, lr=1e-2,
            batch_size=8, upper=upper,
        )  # fmt: skip
        out.append(train(cfg, progress=False).run_dir)
    return out


def _corpus(tmp_path: Path, texts: list[str], training: Path) -> Path:
    """Four shards: JSON lines (one with training documents: cache hits), CSV, Parquet, and an empty line."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = tmp_path / "corpus"
    d.mkdir()
    (d / "part-0.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts[:12]))
    (d / "part-1.jsonl").write_text(training.read_text())  # labelled rows: the label is ignored
    (d / "part-2.csv").write_text("id,text\n" + "".join(f'{i},"{t}"\n' for i, t in enumerate(texts[12:30])))
    pq.write_table(pa.table({"text": [*texts[30:45], ""]}), d / "part-3.parquet")
    return d


def _same(got: str, want: str) -> None:
    """The same lines: sources and labels equal, probabilities equal up to thread-count rounding."""
    a, b = [json.loads(x) for x in got.splitlines()], [json.loads(x) for x in want.splitlines()]
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x["source"] == y["source"] and x.get("label") == y.get("label") and x.get("skipped") == y.get("skipped")
        for label, p in y.get("probabilities", {}).items():
            assert x["probabilities"][label] == pytest.approx(p, abs=1e-4)


def _local(runs: list[str], shard: Path) -> dict[str, str]:
    tasks = TaskSet.load(runs, "cpu", "fp32")
    examples = tasks.models[0].read(shard, label_field=None)
    preds = tasks.predict([e.doc for e in examples])
    return {name: prediction_lines([e.source for e in examples], p.items) for name, p in preds.items()}


@pytest.mark.ray
def test_ray_predict_equals_local_predict_and_resumes(
    cluster: ModuleType, runs: list[str], texts: list[str], toy_classification: dict[str, Path], tmp_path: Path
) -> None:
    corpus = _corpus(tmp_path, texts, toy_classification["train"])
    out = tmp_path / "out"
    summary = predict_files_ray(runs, str(corpus), out, RayPool(num_workers=2), precision="fp32", progress=False)
    shards = input_shards(str(corpus))
    assert summary.shards == 4 and summary.skipped == 0 and summary.tasks == ["topic", "topic-lora"]
    assert summary.documents == 12 + 48 + 18 + 16 and summary.hits >= 48  # part-1 is the training set
    for shard in shards:
        want = _local(runs, shard.resolve())
        for name in ("topic", "topic-lora"):
            _same((out / name / f"{shard.stem}.jsonl").read_text(), want[name])
    assert '"skipped": "empty document"' in (out / "topic" / "part-3.jsonl").read_text()
    # a re-run skips finished shards; a deleted output is predicted again
    (out / "topic-lora" / "part-2.jsonl").unlink()
    again = predict_files_ray(runs, str(corpus / "*.csv"), out, RayPool(num_workers=1), progress=False)
    assert again.shards == 1 and (out / "topic-lora" / "part-2.jsonl").exists()
    assert predict_files_ray(runs, str(corpus), out, progress=False).skipped == 4


@pytest.mark.ray
def test_a_killed_predict_worker_is_retried(
    cluster: ModuleType, runs: list[str], texts: list[str], toy_classification: dict[str, Path], tmp_path: Path
) -> None:
    from ray_actors import PredictDiesOnce

    corpus = _corpus(tmp_path, texts, toy_classification["train"])
    out = tmp_path / "out"
    summary = predict_files_ray(
        runs, str(corpus), out, RayPool(num_workers=2), precision="fp32", progress=False, actor_class=PredictDiesOnce
    )
    assert (tmp_path / "died").exists() and summary.shards == 4
    for shard in input_shards(str(corpus)):
        _same((out / "topic" / f"{shard.stem}.jsonl").read_text(), _local(runs, shard.resolve())["topic"])


@pytest.mark.ray
def test_cli_engine_ray(cluster: ModuleType, runs: list[str], texts: list[str], tmp_path: Path) -> None:
    d = tmp_path / "c"
    d.mkdir()
    (d / "a.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts[:5]))
    args = ["predict", "--engine", "ray", "--num-workers", "1", "--data", str(d), "--out", str(tmp_path / "o"), "-q"]
    r = CliRunner().invoke(app, [*args, "--run", runs[0], "--run", runs[1]])
    assert r.exit_code == 0, r.output
    assert "1 shard(s) x 2 task(s)" in r.output and (tmp_path / "o" / "topic-lora" / "a.jsonl").exists()


def test_input_shards_and_refusals(tmp_path: Path, runs: list[str]) -> None:
    (tmp_path / "a.jsonl").write_text("{}\n")
    (tmp_path / "a.csv").write_text("text\nx\n")
    (tmp_path / "notes.md").write_text("x")
    with pytest.raises(InputDataError, match=r"would both write a\.jsonl"):
        input_shards(str(tmp_path))
    assert input_shards(str(tmp_path / "*.csv")) == [tmp_path / "a.csv"]
    with pytest.raises(InputDataError, match="matches no input file"):
        input_shards(str(tmp_path / "none-*.jsonl"))
    r = CliRunner().invoke(
        app, ["predict", "--engine", "ray", "--update-cache", "--run", runs[0], "--data", "x", "--out", "o"]
    )
    assert r.exit_code != 0 and "cache build --engine ray" in r.output
