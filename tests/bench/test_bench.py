"""`embrecycle bench` end to end on a tiny model and toy data: every method, the report, the plots, the README table."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from embrecycle import ConfigError
from embrecycle.bench import BenchConfig, BenchDataset, summarize, update_readme
from embrecycle.cli import app


@pytest.fixture
def data_dir(toy_classification, toy_ner, tmp_path: Path) -> Path:  # type: ignore[no-untyped-def]
    d = tmp_path / "data"
    for name, files, ext in (("sci-cite", toy_classification, "jsonl"), ("bc5cdr", toy_ner, "conll")):
        (d / name).mkdir(parents=True)
        shutil.copy(files["train"], d / name / f"train.{ext}")
        shutil.copy(files["dev"], d / name / f"dev.{ext}")
    # test documents differ from every training and dev document (so they are not in the cache)
    rows = [json.loads(line) for line in toy_classification["dev"].read_text().splitlines()]
    (d / "sci-cite" / "test.jsonl").write_text(
        "".join(json.dumps({**r, "text": "a " + r["text"]}) + "\n" for r in rows)
    )
    conll = toy_ner["dev"].read_text().replace("-DOCSTART- (1)\n\n", "").split("\n\n")
    (d / "bc5cdr" / "test.conll").write_text("\n\n".join("a\tDT\tO\tO\n" + s for s in conll if s.strip()))
    return d


def test_bench_runs_every_method_and_writes_the_report(tiny_bert_dir, data_dir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "results"
    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- bench:start -->\nold\n<!-- bench:end -->\nend\n")
    args = ["bench", "--model", tiny_bert_dir, "--out", str(out), "--seed", "1"]
    args += ["--no-memory", "--max-length", "64"]  # the tiny model has 64 positions
    methods = ["full-finetune", "recycle-25", "recycle-50", "recycle-75", "frozen-head", "recycle-50-lora"]
    args += [x for m in methods for x in ("--method", m)]
    args += [
        "--dataset",
        f"sci-cite=classification:{data_dir / 'sci-cite'}",
        "--dataset",
        f"bc5cdr=ner:{data_dir / 'bc5cdr'}",
        "--seed",
        "2",
        "--epochs",
        "1",
        "--train-limit",
        "24",
        "--dev-limit",
        "8",
        "--test-limit",
        "8",
    ]
    r = CliRunner().invoke(app, [*args, "--readme", str(readme)])
    assert r.exit_code == 0, r.output
    result = json.loads((out / "bench.json").read_text())
    train_rows = [x for x in result["rows"] if x["kind"] == "train"]
    assert len(train_rows) == 2 * len(methods) * 2  # datasets x methods x seeds
    assert {x["layer"] for x in train_rows if x["method"] == "frozen-head"} == {4}  # every layer cached
    assert {x["layer"] for x in train_rows if x["method"] == "recycle-25"} == {1}
    caches = [x for x in result["rows"] if x["kind"] == "cache"]
    assert {(c["dataset"], c["layer"]) for c in caches} == {
        (d, k) for d in ("sci-cite", "bc5cdr") for k in (1, 2, 3, 4)
    }
    for row in train_rows:
        assert 0 <= row["test_score"] <= 1 and row["train_examples_per_second"] > 0
        if row["baseline"] is None:
            assert row["infer_cached_hits"] == row["infer_cached_docs"] and 0 < row["read_fraction"] < 1
        assert row["infer_new_misses"] == row["infer_new_docs"]  # test documents are not in the cache
    report = (out / "bench.md").read_text()
    for section in ("## Results", "## Targets", "## Caches", "## Amortisation", "recycle-50-lora"):
        assert section in report
    for png in ("bench_accuracy_vs_time.png", "bench_amortisation.png", "bench_speedup_vs_layer.png"):
        assert (out / png).stat().st_size > 1000 and f"]({png})" in report
    text = readme.read_text()
    assert "old" not in text and "| recycle-50 |" in text and text.endswith("<!-- bench:end -->\nend\n")
    summary = summarize(result["rows"])
    full = [s for s in summary if s["method"] == "full-finetune"]
    assert all(s["retention"] == pytest.approx(1.0) and s["train_speedup"] == pytest.approx(1.0) for s in full)
    # the report re-renders from the results file alone
    (out / "bench.md").unlink()
    r = CliRunner().invoke(app, ["bench", "--from-results", str(out / "bench.json")])
    assert r.exit_code == 0 and (out / "bench.md").exists()
    assert not (out / "bench.partial.json").exists()  # only kept while running
    # runs of different (model, dataset) pairs merge into one report; the same pair twice is refused
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    rows = result["rows"]
    a.write_text(json.dumps({**result, "rows": [x for x in rows if x["dataset"] == "sci-cite"]}))
    b.write_text(json.dumps({**result, "rows": [x for x in rows if x["dataset"] == "bc5cdr"]}))
    merged = tmp_path / "merged"
    merged.mkdir()
    args = ["bench", "--from-results", str(a), "--from-results", str(b), "--out", str(merged)]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert len(json.loads((merged / "bench.json").read_text())["rows"]) == len(rows)
    assert (merged / "bench.md").read_text().count("Run of models") == 2
    r = CliRunner().invoke(app, ["bench", "--from-results", str(a), "--from-results", str(a), "--out", str(merged)])
    assert r.exit_code == 2 and "would mix two runs" in r.output


def test_bench_settings_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown methods \['bert-flow'\]"):
        BenchConfig(methods=["bert-flow"])
    with pytest.raises(ConfigError, match="epochs=0"):
        BenchConfig(epochs=0)
    r = CliRunner().invoke(app, ["bench", "--quick", "--dataset", f"sci-cite=classification:{tmp_path}"])
    assert r.exit_code == 2 and "splits not found" in r.output
    assert not update_readme(_write(tmp_path / "R.md", "no markers"), "t", "l")


def test_datasets_are_the_users_own(data_dir: Path, tmp_path: Path) -> None:
    folder = data_dir / "bc5cdr"
    ds = BenchDataset.parse(f"tags=ner:{folder}")
    assert (ds.name, ds.task, ds.metric) == ("tags", "ner", "f1")
    assert [ds.path(s) for s in ("train", "dev", "test")] == [folder / f"{s}.conll" for s in ("train", "dev", "test")]
    files = ",".join(str(data_dir / "sci-cite" / f"{s}.jsonl") for s in ("train", "dev", "test"))
    three = BenchDataset.parse(f"cites=classification:{files}")
    assert three.metric == "macro_f1" and three.test.endswith("test.jsonl")
    config = BenchConfig(datasets=[ds, f"cites=classification:{files}"])
    assert config.bench_datasets() == [ds, three]
    assert config.datasets == [ds.spec(), f"cites=classification:{files}"]  # saved in the command-line form
    assert BenchConfig.from_dict(config.to_dict()).bench_datasets() == [ds, three]
    # no default datasets; every bad one named at once, with the form to use
    with pytest.raises(ConfigError, match="no dataset given: name at least one as --dataset NAME=TASK:DIR"):
        BenchConfig()
    with pytest.raises(ConfigError) as e:
        BenchConfig(datasets=["sci-cite", f"x=qa:{folder}", f"y=ner:{tmp_path}", f"tags=ner:{folder}"])
    message = str(e.value)
    assert "--dataset 'sci-cite' is not NAME=TASK:DIR or NAME=TASK:TRAIN,DEV,TEST" in message
    assert "task 'qa' is not known" in message
    assert "dataset 'y': splits not found" in message
    with pytest.raises(ConfigError, match=r"dataset names \['tags'\] are given twice"):
        BenchConfig(datasets=[f"tags=ner:{folder}", f"tags=ner:{folder}"])
    with pytest.raises(ConfigError, match="give one folder or three files"):
        BenchConfig(datasets=[f"tags=ner:{folder},{folder}"])


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_peak_memory_is_measured_in_a_fresh_process(tiny_bert_dir, toy_classification, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from dataclasses import asdict

    from embrecycle.bench.runner import _peak_memory
    from embrecycle.training import TrainConfig

    cfg = TrainConfig(
        task="classification",
        model=tiny_bert_dir,
        layer=2,
        train=str(toy_classification["train"]),
        dev=str(toy_classification["dev"]),
        out=str(tmp_path / "run"),
        cache=str(tmp_path / "cache"),
        epochs=1,
    )
    files = [toy_classification[s] for s in ("train", "dev", "dev")]
    dataset = "toy=classification:" + ",".join(str(f) for f in files)
    peak, idle = _peak_memory(BenchConfig(batch_size=4, datasets=[dataset]), asdict(cfg))
    assert 50e6 < idle <= peak < 4e9  # a python process with torch loaded, not the parent's figure
    assert (tmp_path / "run-memory-cache").is_dir() and not (tmp_path / "cache").exists()  # its own cache
