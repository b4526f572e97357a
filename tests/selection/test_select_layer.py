"""`embrecycle select-layer` on a tiny model and toy data: the command, JSON, budget handling, bad input, reuse."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from embrecycle import ConfigError
from embrecycle.cache.location import default_cache_dir
from embrecycle.cache.store import Cache
from embrecycle.cli import app
from embrecycle.selection import Candidate, SelectConfig, recommend, select_layer
from embrecycle.tasks.classification import ClassificationTask
from embrecycle.training import TrainConfig, train


def _config(tiny_bert_dir: str, files: dict[str, Path], tmp_path: Path, task: str = "classification", **kw):  # type: ignore[no-untyped-def]
    base = {
        "task": task,
        "model": tiny_bert_dir,
        "train": str(files["train"]),
        "dev": str(files["dev"]),
        "out": str(tmp_path / "sel"),
        "lr": 3e-3,
        "reference_lr": 3e-3,  # the tiny model learns at the recycled rate; full fine-tuning's default is for real ones
        "head_lr": 3e-3,  # and its head too (the default 1e-2 overshoots on the toy data)
        "proxy_epochs": 6,
        "cache_root": str(tmp_path / "caches"),
        "budget_minutes": 60.0,  # ample even on a loaded machine: the plan is timed
    }
    return SelectConfig(**{**base, **kw})


def test_selection_measures_every_candidate_and_recommends_within_target(
    tiny_bert_dir: str, toy_classification: dict[str, Path], tmp_path: Path
) -> None:
    sel = select_layer(_config(tiny_bert_dir, toy_classification, tmp_path, target_retention=0.5), progress=None)
    assert sel.num_layers == 4
    assert [c.layer for c in sel.candidates] == [1, 2, 3]  # 25/50/75% of 4 layers
    assert all(c.status == "measured" for c in sel.candidates)
    for c in sel.candidates:
        assert c.proxy_score is not None and c.measured_retention is not None
        assert c.measured_retention == pytest.approx(c.proxy_score / sel.reference["proxy_score"])
        assert c.train_examples_per_second and c.train_examples_per_second > 0
        assert c.ceiling == pytest.approx(4 / (4 - c.layer))
        assert c.cache_bytes_per_token and c.cache_bytes_per_token >= 32 * 2  # hidden 32, float16
        assert c.corpus_cache_bytes == int(c.cache_bytes_per_token * sel.corpus_tokens)
    preds = [c.predicted_retention for c in sel.candidates]
    assert preds == sorted(preds, reverse=True)  # non-increasing in k
    assert all(p <= c.measured_retention for p, c in zip(preds, sel.candidates, strict=True))  # type: ignore[operator]
    ref_half = sel.reference["half_proxy_score"]
    assert 0 < ref_half <= sel.reference["proxy_score"]  # best dev score half-way, then over the whole proxy
    chance = sel.reference["constant_predictor_score"]
    for c in sel.candidates:  # every proxy was scored half-way; stable: its retention moved by <= 1 - target
        assert c.half_proxy_score is not None and c.half_proxy_score <= c.proxy_score  # type: ignore[operator]
        if ref_half <= chance + 0.01:  # the reference had not learned yet half-way: no ratio, not stable
            assert c.half_retention is None and c.stable is False
            note = f"k={c.layer} is unstable: the full fine-tuning reference had not learned"
            assert any(note in n for n in sel.notes)
        else:
            assert c.half_retention == pytest.approx(c.half_proxy_score / ref_half)
            assert c.stable == (abs(c.measured_retention - c.half_retention) <= 0.5)  # type: ignore[operator]
        if chance + 0.01 < sel.reference["proxy_score"]:  # the reference learned: each ratio has an interval
            lo, hi = c.retention_interval  # type: ignore[misc]
            assert lo <= hi
    meeting = [c.layer for c in sel.candidates if c.stable and c.predicted_retention >= 0.5]  # type: ignore[operator]
    assert sel.recommended == (max(meeting) if meeting else None)
    assert sel.sample == 48 and sel.dev_sample == 16  # the whole toy files fit the budget
    assert sel.seconds <= sel.budget_seconds
    out = Path(sel.config["out"])
    assert json.loads((out / "selection.json").read_text())["recommended"] == sel.recommended
    assert (out / "selection.png").stat().st_size > 1000
    assert "| k |" in (out / "selection.md").read_text()


def test_training_at_the_selected_cut_reuses_its_cache(
    tiny_bert_dir: str, toy_classification: dict[str, Path], tmp_path: Path
) -> None:
    sel = select_layer(
        _config(tiny_bert_dir, toy_classification, tmp_path, candidates=[2], sample=24, dev_sample=8), progress=None
    )
    cache = sel.candidate(2).cache
    assert cache is not None and len(Cache.open(cache)) == 24 + 8
    # named as `embrecycle train` names the cache of these settings (under --cache-root)
    assert Path(cache) == default_cache_dir(Cache.open(cache).settings, root=tmp_path / "caches")
    result = train(
        TrainConfig(
            task="classification",
            model=tiny_bert_dir,
            layer=2,
            train=str(toy_classification["train"]),
            dev=str(toy_classification["dev"]),
            out=str(tmp_path / "run"),
            cache=cache,
            epochs=1,
        ),
        progress=False,
    )
    assert result.cache == cache
    assert len(Cache.open(cache)) == 48 + 16  # only the documents the sample left out were added


def test_without_a_cache_root_the_proxy_caches_go_where_train_looks(
    tiny_bert_dir: str, toy_classification: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EMBRECYCLE_CACHE_HOME", str(tmp_path / "home"))
    config = _config(tiny_bert_dir, toy_classification, tmp_path, candidates=[2], sample=24, dev_sample=8)
    sel = select_layer(dataclasses.replace(config, cache_root=None), progress=None)
    cache = sel.candidate(2).cache
    assert cache is not None and Path(cache).parent == tmp_path / "home"
    assert Path(cache) == default_cache_dir(Cache.open(cache).settings)


def test_ner_and_explicit_candidates(tiny_bert_dir: str, toy_ner: dict[str, Path], tmp_path: Path) -> None:
    sel = select_layer(_config(tiny_bert_dir, toy_ner, tmp_path, task="ner", candidates=[4, 2]), progress=None)
    assert sel.metric == "f1"
    assert [c.layer for c in sel.candidates] == [2, 4]
    assert sel.candidate(4).ceiling is None  # k = N: only the head is trained


def test_default_budget_is_a_share_of_full_finetuning(
    tiny_bert_dir: str, toy_classification: dict[str, Path], tmp_path: Path
) -> None:
    settings = {"budget_minutes": None, "budget_share": 0.5, "candidates": [2], "epochs": 5000}
    sel = select_layer(_config(tiny_bert_dir, toy_classification, tmp_path, **settings), progress=None)
    assert sel.budget_seconds == pytest.approx(0.5 * sel.estimated_full_finetune_seconds)
    assert _config(tiny_bert_dir, toy_classification, tmp_path).budget_share == 0.25  # the default: a quarter
    # timed at the planned run's batch size (32, the default) and at the proxies' (16)
    timing = Path(sel.config["out"]) / "proxies"
    assert (timing / "timing-b32" / "run").is_dir() and (timing / "timing-b16" / "run").is_dir()


def test_too_small_a_budget_is_refused_before_any_proxy(
    tiny_bert_dir: str, toy_classification: dict[str, Path], tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=r"budget of 0.00 min is too small.*raise --budget-minutes"):
        select_layer(_config(tiny_bert_dir, toy_classification, tmp_path, budget_minutes=1e-4), progress=None)
    assert not (tmp_path / "sel" / "proxies" / "k0").exists()
    with pytest.raises(ConfigError, match="sample=48 needs about"):
        select_layer(
            _config(tiny_bert_dir, toy_classification, tmp_path, budget_minutes=1e-4, sample=48), progress=None
        )


def test_budget_running_out_skips_the_remaining_candidates(
    tiny_bert_dir: str, toy_classification: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import embrecycle.selection.costs as costs

    real = costs.plan_seconds
    calls = {"n": 0}

    def plan(costs, m, d, epochs, ups):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        # the plan fits, but every per-candidate check after the first says the rest would overrun
        return real(costs, m, d, epochs, ups) if len(ups) > 1 or calls["n"] <= 2 + 100 * (ups == [0.75]) else 1e9

    monkeypatch.setattr(costs, "plan_seconds", plan)
    sel = select_layer(_config(tiny_bert_dir, toy_classification, tmp_path, sample=16), progress=None)
    statuses = [c.status for c in sel.candidates]
    assert "skipped (budget)" in statuses and statuses[0] == "measured"
    assert any("skipped" in n for n in sel.notes)
    skipped = [c for c in sel.candidates if c.status != "measured"]
    assert all(c.proxy_score is None and c.predicted_retention is None for c in skipped)


def test_a_reference_that_learned_nothing_predicts_nothing(
    tiny_bert_dir: str, toy_classification: dict[str, Path], tmp_path: Path
) -> None:
    sel = select_layer(
        _config(tiny_bert_dir, toy_classification, tmp_path, lr=1e-9, proxy_epochs=1, candidates=[2]), progress=None
    )
    assert sel.reference["proxy_score"] <= sel.reference["constant_predictor_score"] + 0.01
    assert sel.recommended is None
    assert sel.candidate(2).predicted_retention is None and sel.candidate(2).proxy_score is not None
    assert any("no better than a constant prediction" in n for n in sel.notes)


def _cut(layer: int, retention: float | None, stable: bool | None) -> Candidate:
    return Candidate(layer, layer / 6, "measured", measured_retention=retention, stable=stable)


@pytest.mark.parametrize(
    ("cuts", "target", "predicted", "recommended"),
    [
        # the highest cut meeting the target is recommended
        ([_cut(2, 1.0, True), _cut(3, 0.995, True), _cut(4, 0.97, True)], 0.99, [1.0, 0.995, 0.97], 3),
        # a later cut is never credited with more than an earlier one kept
        ([_cut(2, 0.97, True), _cut(3, 1.02, True), _cut(4, 1.01, True)], 0.99, [0.97, 0.97, 0.97], None),
        # an unstable cut is not recommended even when its prediction meets the target: the next stable one is
        ([_cut(2, 1.0, True), _cut(3, 1.0, True), _cut(4, 1.0, False)], 0.99, [1.0, 1.0, 1.0], 3),
        ([_cut(2, 1.0, False), _cut(3, 1.0, False)], 0.99, [1.0, 1.0], None),
        # no prediction (a reference that learned nothing, or a cut skipped for the budget): nothing recommended
        ([_cut(2, None, None), _cut(3, None, None)], 0.5, [None, None], None),
        ([_cut(2, 1.0, True), _cut(3, None, None)], 0.99, [1.0, None], 2),
    ],
)
def test_recommendation_rule(cuts: list[Candidate], target: float, predicted: list, recommended: int | None) -> None:
    assert recommend(cuts, target) == recommended
    assert [c.predicted_retention for c in cuts] == predicted


def test_unstable_cuts_are_named_in_the_notes(
    tiny_bert_dir: str, toy_classification: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import embrecycle.selection.runner as runner

    # the reference scores 0.6 half-way and 0.9 at the end; the cut 0.9 half-way and 0.8 at the end
    def half_and_best(result, metric):  # type: ignore[no-untyped-def]
        return (0.6, 0.9) if result.method == "full-finetune" else (0.9, 0.8)

    monkeypatch.setattr(runner, "half_and_best", half_and_best)
    sel = select_layer(
        _config(tiny_bert_dir, toy_classification, tmp_path, candidates=[2], target_retention=0.8), progress=None
    )
    c = sel.candidate(2)
    assert c.half_retention == pytest.approx(1.5) and c.measured_retention == pytest.approx(0.8 / 0.9)
    assert c.stable is False and sel.recommended is None  # 88.9% meets 80%, but moved 61 points (> 20)
    assert any("k=2 is unstable" in n and "150.0%" in n and "88.9%" in n for n in sel.notes)
    assert "unstable" in (Path(sel.config["out"]) / "selection.md").read_text()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"task": "qa"}, "task='qa'"),
        ({"target_retention": 0.0}, r"target_retention=0.0 \(must be in \(0, 1\]"),
        ({"target_retention": 1.5}, r"target_retention=1.5"),
        ({"candidates": [0]}, "k = 0 is full fine-tuning"),
        ({"budget_minutes": -1.0}, "budget_minutes=-1.0"),
        ({"budget_share": 0.0}, r"budget_share=0.0 \(must be in \(0, 1\]"),
        ({"budget_share": 2.0}, "budget_share=2.0"),
    ],
)
def test_bad_settings_are_refused(overrides: dict, message: str, tmp_path: Path) -> None:
    base = {"task": "classification", "model": "m", "train": "t", "dev": "d", "out": str(tmp_path)}
    with pytest.raises(ConfigError, match=message):
        SelectConfig(**{**base, **overrides})


def test_candidate_out_of_range_names_the_depth(
    tiny_bert_dir: str, toy_classification: dict[str, Path], tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=r"\[7\] are out of range.*has 4 layers; choose cuts k in 1..4"):
        select_layer(_config(tiny_bert_dir, toy_classification, tmp_path, candidates=[2, 7]), progress=None)


def test_cli_table_and_json(tiny_bert_dir: str, toy_classification: dict[str, Path], tmp_path: Path) -> None:
    args = [
        "select-layer", "--model", tiny_bert_dir, "--task", "classification",
        "--train", str(toy_classification["train"]), "--dev", str(toy_classification["dev"]),
        "--candidates", "1,3", "--budget-minutes", "60", "--lr", "3e-3", "--proxy-epochs", "6",
        "--target-retention", "0.5", "--cache-root", str(tmp_path / "caches"),
    ]  # fmt: skip
    runner = CliRunner()
    res = runner.invoke(app, [*args, "--out", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output
    assert "| k |" in res.output and "recommended:" in res.output
    res = runner.invoke(app, [*args, "--out", str(tmp_path / "b"), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)  # progress bars of model loading go to stderr
    assert [c["layer"] for c in data["candidates"]] == [1, 3]
    assert {"recommended", "reference", "budget_seconds", "seconds", "corpus_tokens"} <= set(data)
    assert data["candidates"][0]["cache"].startswith(str(tmp_path / "caches"))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--candidates", "9"], "out of range"),
        (["--candidates", "two"], "--candidates takes integers"),
        (["--task", "qa"], "task='qa'"),
        (["--target-retention", "1.2"], "target_retention=1.2"),
        (["--budget-share", "1.5"], "budget_share=1.5"),
    ],
)
def test_cli_bad_input(
    extra: list[str], message: str, tiny_bert_dir: str, toy_classification: dict[str, Path], tmp_path: Path
) -> None:
    args = ["select-layer", "--model", tiny_bert_dir, "--task", "classification"]
    args += ["--train", str(toy_classification["train"]), "--dev", str(toy_classification["dev"])]
    args += ["--out", str(tmp_path / "o"), *extra]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2
    assert message in res.output


def test_chance_level_is_the_best_constant_prediction_not_only_the_majority(tmp_path: Path) -> None:
    from embrecycle.data import read_examples
    from embrecycle.selection.stats import constant_score

    rows = [("a", "x"), ("a", "y"), ("a", "z"), ("b", "w")]
    train_file, dev_file = tmp_path / "train.jsonl", tmp_path / "dev.jsonl"
    train_file.write_text("".join(json.dumps({"text": t, "label": lab}) + "\n" for lab, t in rows))
    dev_file.write_text("".join(json.dumps({"text": f"d{i}", "label": "b"}) + "\n" for i in range(3)))
    train_ex = read_examples(train_file)
    task = ClassificationTask(ClassificationTask.label_vocabulary(train_ex))
    gold = [task.gold(e) for e in read_examples(dev_file)]
    # "a" is the training majority but scores 0 on this dev sample; always predicting "b" scores macro-F1 0.5
    assert constant_score(task, gold) == pytest.approx(0.5)


def test_retention_interval_is_a_paired_bootstrap_over_dev_documents() -> None:
    from embrecycle.selection import retention_interval

    task = ClassificationTask(["a", "b"])
    gold = ["a", "b"] * 50
    same = retention_interval(task, gold, gold, gold, seed=0)
    assert same == pytest.approx([1.0, 1.0])  # identical predictions: the ratio is 1 on every draw
    worse = ["a", "b"] * 40 + ["b", "a"] * 10  # the cut gets 20 of 100 wrong, the reference none
    lo, hi = retention_interval(task, gold, gold, worse, seed=0)  # type: ignore[misc]
    point = task.metrics(gold, worse)["macro_f1"]
    assert lo < point < hi < 1.0  # the point ratio lies inside, the interval excludes "as good"
    assert retention_interval(task, gold, gold, worse, seed=0) == [lo, hi]  # seeded
    small = retention_interval(task, gold[60:], gold[60:], worse[60:], seed=0)  # 40 documents, 20 wrong
    assert small is not None and small[1] - small[0] > hi - lo  # fewer documents, a wider interval
    assert retention_interval(task, gold, gold[:10], worse, seed=0) is None  # predictions missing
    assert retention_interval(task, [], [], [], seed=0) is None


def test_run_cost_is_planned_from_the_loops_own_batches() -> None:
    import numpy as np

    from embrecycle.batching import train_batches
    from embrecycle.selection.costs import padded_tokens, seconds_per_token

    lengths = np.array([3, 9, 5, 7, 4, 8])
    tokens = padded_tokens(lengths, 2, 42, 2)
    batches = [b for e in range(2) for b in train_batches(lengths, 2, 42, e)]
    assert tokens == [2 * int(lengths[b].max()) for b in batches] and len(tokens) == 6

    from types import SimpleNamespace

    # two passes of three steps; the first pass pays one-off costs and is not timed
    probe = SimpleNamespace(step_seconds=[9.0, 9.0, 9.0, *(t / 100 for t in tokens[3:])])
    assert seconds_per_token(probe, lengths, 2, 42) == pytest.approx(0.01)
