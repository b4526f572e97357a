"""`embrecycle bench` end to end on a tiny model and toy data: every method, the report, the plots, the README table."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
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
    for s in full:  # no ratio to a reference that scored 0 (the tiny model's NER)
        assert (s["retention"] == pytest.approx(1.0) or s["test"] == 0) and s["train_speedup"] == pytest.approx(1.0)
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


def test_a_bench_sweeps_on_the_first_seed_and_resumes_run_by_run(tiny_bert_dir, data_dir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from embrecycle.bench import run_and_report
    from embrecycle.bench.config import lr_grid

    out = tmp_path / "results"
    settings = {
        "models": [tiny_bert_dir],
        "datasets": [f"sci-cite=classification:{data_dir / 'sci-cite'}"],
        "methods": ["full-finetune", "recycle-50"],
        "seeds": [1, 2],
        "lr_steps": 1,
        "epochs": 1,
        "max_length": 64,
        "train_limit": 24,
        "dev_limit": 8,
        "test_limit": 8,
        "memory": False,
        "out": str(out),
    }
    said: list[str] = []
    run_and_report(BenchConfig(**settings), progress=said.append)
    kept = out / "runs" / Path(tiny_bert_dir).name / "sci-cite"
    runs = sorted(p.stem for p in kept.glob("*-seed*.json"))
    # 3 rates on seed 1 per method, then seed 2 at the best of them
    assert len(runs) == 2 * 3 + 2 and sum("trained" in m for m in said) == 8
    result = json.loads((out / "bench.json").read_text())
    summary = {s["method"]: s for s in summarize(result["rows"])}
    for method, default in (("full-finetune", 1e-4), ("recycle-50", 3e-4)):
        s = summary[method]
        assert [lr for lr, _ in s["lrs_tried"]] == pytest.approx(lr_grid(default, 1))
        assert len(s["lrs_tried"]) == 3 and s["lr"] in [lr for lr, _ in s["lrs_tried"]] and s["seeds"] == 2
        assert dict(s["lrs_tried"])[s["lr"]] == max(dev for _, dev in s["lrs_tried"])  # ties: nearest the default
        at_best = [r["dev_score"] for r in result["rows"] if r.get("method") == method and r.get("lr") == s["lr"]]
        assert s["dev"] == pytest.approx(np.mean(at_best))
    assert (out / "work" / ".gitignore").read_text().strip().endswith("*")  # caches stay out of version control
    assert "## Learning rates" in (out / "bench.md").read_text()
    # an interrupted benchmark: one run lost; the re-run trains that one only
    (kept / f"{runs[-1]}.json").unlink()
    said.clear()
    run_and_report(BenchConfig(**settings), progress=said.append)
    assert sum("trained" in m for m in said) == 1 and sum("(kept)" in m for m in said) == 7
    # other settings do not mix with the kept runs
    with pytest.raises(ConfigError, match=r"keeps runs made with other settings \(epochs differ"):
        run_and_report(BenchConfig(**{**settings, "epochs": 2, "seeds": [1], "lr_steps": 0}), progress=said.append)
    said.clear()
    run_and_report(
        BenchConfig(**{**settings, "epochs": 2, "seeds": [1], "lr_steps": 0, "overwrite": True}), progress=said.append
    )
    assert sum("trained" in m for m in said) == 2 and len(list(kept.glob("*-seed*.json"))) == 2


def test_learning_rate_grids_and_per_dataset_limits(data_dir: Path) -> None:
    from embrecycle.bench.config import lr_grid

    assert lr_grid(3e-4, 1) == pytest.approx([1e-4, 3e-4, 1e-3])
    assert lr_grid(1e-2, 2) == pytest.approx([1e-3, 3e-3, 1e-2, 3e-2, 1e-1])
    assert lr_grid(5e-5, 1) == pytest.approx([3e-5, 5e-5, 1e-4])  # off the ladder: kept, with its neighbours
    assert lr_grid(3e-4, 0) == [3e-4]
    ds = f"chemprot=classification:{data_dir / 'sci-cite'}"
    config = BenchConfig(datasets=[ds], train_limit=100, limits=["chemprot:train=all", "chemprot:dev=7"])
    assert (config.limit("chemprot", "train"), config.limit("chemprot", "dev"), config.limit("chemprot", "test")) == (
        None,
        7,
        300,
    )
    with pytest.raises(ConfigError) as e:
        BenchConfig(datasets=[ds], limits=["chemprot=all", "chemprot:train=0", "other:dev=5"], lr_steps=-1)
    message = str(e.value)
    assert "--limit 'chemprot=all' is not NAME:SPLIT=N" in message and "'chemprot:train=0'" in message
    assert "--limit names datasets ['other']" in message and "lr_steps=-1" in message


def _row(method: str, seed: int, lr: float, dev: float, test: float, **extra: float) -> dict[str, object]:
    base = {"kind": "train", "model": "m", "dataset": "d", "metric": "macro_f1", "method": method, "seed": seed}
    base |= {"lr": lr, "default_lr": lr, "dev_score": dev, "test_score": test, "num_layers": 4, "layer": 2}
    base |= {"baseline": None if method != "full-finetune" else "full-finetune", "train_seconds": 1.0}
    base |= {"train_examples_per_second": 1.0, "infer_cached_docs_per_second": 1.0, "infer_new_docs_per_second": 1.0}
    base |= {"peak_memory_bytes": 0, "trainable_parameters": 1, "run_weights_bytes": 1, "read_fraction": 0.0}
    base |= {"cache_build_seconds": 0.0}
    return base | extra


def test_retention_has_an_interval_and_no_ratio_to_a_reference_at_chance() -> None:
    from embrecycle.bench.report import headline_table, retention_interval

    ratio, low, high = retention_interval([0.8, 0.82, 0.81], [0.82, 0.83, 0.84])  # type: ignore[misc]
    assert low < ratio < high and ratio == pytest.approx(0.81 / 0.83)
    assert retention_interval([0.5], [0.5]) == (1.0, 1.0, 1.0)
    assert retention_interval([0.5], [0.0]) is None
    chance = {"dev_constant_score": 0.2, "dev_chance_score": 0.25}
    rows = [_row("full-finetune", s, 1e-4, 0.8, 0.8 + s / 100, **chance) for s in (1, 2, 3)]
    rows += [_row("recycle-50", s, 3e-4, 0.79, 0.79 + s / 100, **chance) for s in (1, 2, 3)]
    rows += [_row("recycle-50", 1, 1e-3, 0.5, 0.5, **chance)]  # a worse sweep point: not reported
    summary = {s["method"]: s for s in summarize(rows)}
    rec = summary["recycle-50"]
    assert rec["lr"] == 3e-4 and rec["seeds"] == 3 and rec["retention_low"] < rec["retention"] < rec["retention_high"]
    assert "98.8% [95.9%, 101.7%]" in headline_table(list(summary.values()))  # 0.81 / 0.82
    # full fine-tuning no better than chance on dev: the ratio is not given
    at_chance = [{**r, "dev_score": 0.27} if r["method"] == "full-finetune" else r for r in rows]
    table = headline_table(summarize(at_chance))
    assert "n/a: reference near chance" in table and "(near chance)" in table
    # one seed so far (a benchmark still under way): no spread to show, and the cell says so
    one_seed = headline_table(summarize([r for r in rows if r["seed"] == 1]))
    assert "0.8100 (1 seed)" in one_seed and "± 0.0000" not in one_seed


def test_speed_ups_compare_runs_at_one_precision() -> None:
    from embrecycle.bench.report import headline_table

    def run(method: str, seed: int, eps: float, precision: str) -> dict[str, object]:
        return _row(method, seed, 1e-4, 0.8, 0.8, train_examples_per_second=eps, precision=precision, threads=2)

    # seed 1 ran in bf16 on one CPU, seeds 2-3 in fp32 on another: recycling is 2x faster at either precision
    rows = [run("full-finetune", 1, 8.0, "bf16"), run("full-finetune", 2, 4.0, "fp32")]
    rows += [run("full-finetune", 3, 4.0, "fp32")]
    rows += [run("recycle-50", 1, 16.0, "bf16"), run("recycle-50", 2, 8.0, "fp32")]
    rec = {s["method"]: s for s in summarize(rows)}["recycle-50"]
    # the medians over seeds (12 and 4 ex/s) would say 3x
    assert rec["train_speedup"] == pytest.approx(2.0) and rec["speedup_basis"] == "bf16 cpu, fp32 cpu"
    # no setting in common: the ratio of the medians, and the basis says so
    mixed = [r for r in rows if not (r["method"] == "recycle-50" and r["precision"] == "fp32")]
    mixed = [r for r in mixed if not (r["method"] == "full-finetune" and r["precision"] == "bf16")]
    rec = {s["method"]: s for s in summarize(mixed)}["recycle-50"]
    assert rec["train_speedup"] == pytest.approx(4.0) and rec["speedup_basis"] == "mixed settings"
    assert "4.00x (2.00x) (precisions differ)" in headline_table(summarize(mixed))


def test_speed_ups_and_amortisation_compare_runs_on_one_processor() -> None:
    from embrecycle.bench.report import _amortisation

    def run(method: str, seed: int, seconds: float, cpu: str) -> dict[str, object]:
        extra = {"train_seconds": seconds, "train_examples_per_second": 100 / seconds, "cache_build_seconds": 5.0}
        return _row(method, seed, 1e-4, 0.8, 0.8, precision="fp32", threads=2, cpu=cpu, **extra)  # type: ignore[arg-type]

    # full fine-tuning's seeds ran twice on a fast CPU and once on a slow one, recycling's on the slow one only
    rows = [run("full-finetune", 1, 10.0, "fast"), run("full-finetune", 2, 10.0, "fast")]
    rows += [run("full-finetune", 3, 40.0, "slow")]
    rows += [run("recycle-50", 1, 20.0, "slow"), run("recycle-50", 2, 20.0, "slow")]
    rec = {s["method"]: s for s in summarize(rows)}["recycle-50"]
    # the medians over machines (20 s against 10 s) would call recycling 2x slower; on the slow CPU it is 2x faster
    assert rec["train_speedup"] == pytest.approx(2.0) and rec["speedup_basis"] == "fp32 cpu"
    (amort,) = _amortisation(summarize(rows))
    assert amort["per_run"] == (20.0, 40.0) and amort["crossover"] == 1 and amort["basis"] == "fp32 cpu"
    # recycling on the fast CPU only, full fine-tuning on the slow one: no shared setting, so no amortisation row
    fast = [run("full-finetune", 3, 40.0, "slow"), run("recycle-50", 1, 5.0, "fast")]
    rec = {s["method"]: s for s in summarize(fast)}["recycle-50"]
    assert rec["speedup_basis"] == "mixed settings"
    assert _amortisation(summarize(fast)) == []


def test_machine_identity_is_the_environment_s_machine_keys() -> None:
    from embrecycle.bench.results import MACHINE_KEYS, environment, machine_identity

    env = environment()
    assert machine_identity() == {k: env[k] for k in MACHINE_KEYS}
    assert set(machine_identity("torch")) == {*MACHINE_KEYS, "torch"}
    assert machine_identity()["cpu"] and machine_identity()["threads"] >= 1
