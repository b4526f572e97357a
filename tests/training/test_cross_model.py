"""Cross-model recycling end to end on tiny models: a 32-wide consumer fed a 128-wide source's cached states."""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import BertTokenizer

from embrecycle import CacheMismatchError, CacheMissError, ConfigError, TaskSet, export_run, load, open_cache
from embrecycle.cache import BuildConfig, build_cache
from embrecycle.training import TrainConfig, train


@pytest.fixture(scope="module")
def char_source_dir(wide_bert_dir: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The wide BERT with a tokenizer that knows no whole words: every word splits into characters."""
    d = tmp_path_factory.mktemp("char-source")
    for f in Path(wide_bert_dir).iterdir():
        if not f.name.startswith(("vocab", "tokenizer", "special_tokens")):
            (d / f.name).write_bytes(f.read_bytes())
    chars = list(string.ascii_lowercase + string.digits + ".,;:()-'\"!?")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *("##" + c for c in chars)]
    BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True, model_max_length=64).save_pretrained(d)
    return str(d)


def _texts(path: Path) -> list[str]:
    return [json.loads(x)["text"] for x in path.read_text().splitlines()]


def _cfg(tmp: Path, model: str, data: dict[str, Path], source: Path, **kw: Any) -> TrainConfig:
    base = {"task": "classification", "model": model, "layer": 0, "train": str(data["train"]), "dev": str(data["dev"]),
            "out": str(tmp / "run"), "source_cache": str(source), "epochs": 3, "lr": 1e-2, "batch_size": 8}  # fmt: skip
    return TrainConfig(**{**base, **kw})


def _as_pretrained_below_a_cut_at_2(trained: Any, model_dir: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Assert a run cut at 2 kept its embeddings and layers 0-1 as pretrained; its weights and the pretrained ones."""
    from embrecycle.run import build_task_model

    pretrained = build_task_model(model_dir, "classification", list(trained.record.labels)).state_dict()
    got = trained.model.task_model.state_dict()
    for name in pretrained:
        if ".layer.0." in name or ".layer.1." in name or "embeddings" in name:
            torch.testing.assert_close(got[name], pretrained[name], msg=name)  # below the cut: as pretrained
    return got, pretrained


@pytest.fixture(scope="module")
def source_cache(char_source_dir: str, toy_classification: dict[str, Path], tmp_path_factory: Any) -> Path:
    """The source's layer-2 states of the first 20 training documents (training adds the rest)."""
    out = tmp_path_factory.mktemp("src") / "cache"
    build_cache(_texts(toy_classification["train"])[:20], out, BuildConfig(model=char_source_dir, layer=2,
                precision="bf16"), progress=False)  # fmt: skip  # another precision than the runs: new states match it
    return out


@pytest.fixture(scope="module")
def cross_run(
    tiny_bert_dir: str, toy_classification: dict[str, Path], source_cache: Path, tmp_path_factory: Any
) -> str:
    tmp = tmp_path_factory.mktemp("cross")
    return train(_cfg(tmp, tiny_bert_dir, toy_classification, source_cache), progress=False).run_dir


def test_training_adds_missing_documents_and_records_the_source(cross_run: str, source_cache: Path) -> None:
    record = json.loads((Path(cross_run) / "run.json").read_text())
    assert record["source"]["fusion"] == "linear" and record["source"]["settings"]["hidden_size"] == 128
    assert record["source"]["settings"]["layer"] == 2 and record["states"]["layer"] == 0
    assert open_cache(source_cache).stats()["documents"] == 48 + 16  # every train and dev document now
    weights = load(cross_run, "cpu", "fp32").model.fusion
    assert weights is not None
    assert float(weights.proj.weight[:, 32:].detach().abs().sum()) > 0  # the source part left its zero start


def test_save_load_predict_round_trip(cross_run: str, toy_classification: dict[str, Path]) -> None:
    model = load(cross_run, "cpu", "fp32")
    assert model.model.fusion is not None
    docs = _texts(toy_classification["dev"])[:6]
    first = model.predict(docs)
    assert first.hits == 6 and first.misses == 0 and all(first.cached)  # training put them in the source cache
    again = TaskSet.load([cross_run], "cpu", "fp32").predict(docs)[Path(cross_run).name]
    for a, b in zip(first, again, strict=True):
        assert a is not None and b is not None and a["label"] == b["label"]
        for label, p in a["probabilities"].items():
            assert b["probabilities"][label] == pytest.approx(p, abs=1e-6)
    scores = model.evaluate(model.read(toy_classification["dev"]))
    saved = json.loads((Path(cross_run) / "metrics.json").read_text())["best"]["macro_f1"]
    assert scores["macro_f1"] == pytest.approx(saved, abs=1e-6)  # the reloaded run scores what it scored


def test_unseen_documents_need_update_cache(
    cross_run: str, source_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    from embrecycle import predict

    loads = []
    real = predict.load_encoder
    monkeypatch.setattr(predict, "load_encoder", lambda *a, **k: loads.append(a) or real(*a, **k))
    copy = tmp_path / "source"
    shutil.copytree(source_cache, copy)
    model = load(cross_run, "cpu", "fp32")
    new = ["the protein of a new model", "disease and the data"]
    with pytest.raises(CacheMissError, match="--update-cache"):
        model.predict(new, cache=copy)
    got = model.predict(new, cache=copy, update_cache=True)
    assert got.added_to_cache == 2 and got.cached == [False, False]
    assert model.predict(new, cache=copy).cached == [True, True]
    assert model.predict(["a third new one"], cache=copy, update_cache=True).added_to_cache == 1
    assert len(loads) == 1  # the source model loads once per run, not once per call with misses


def test_errors_name_the_fix(
    tiny_bert_dir: str, other_bert_dir: str, toy_classification: dict[str, Path], source_cache: Path,
    cross_run: str, tmp_path: Path,
) -> None:  # fmt: skip
    with pytest.raises(ConfigError, match="--baseline"):
        _cfg(tmp_path, tiny_bert_dir, toy_classification, source_cache, baseline="full-finetune")
    with pytest.raises(ConfigError, match="--fusion-size without --source-cache"):
        TrainConfig(task="classification", model=tiny_bert_dir, layer=2, train="t", dev="d", out="o", fusion_size=32)
    with pytest.raises(ConfigError, match=r"--fusion-size 64 differs .* hidden size 32"):
        train(_cfg(tmp_path, tiny_bert_dir, toy_classification, source_cache, fusion_size=64), progress=False)
    with pytest.raises(FileNotFoundError, match="embrecycle cache build"):
        train(_cfg(tmp_path, tiny_bert_dir, toy_classification, tmp_path / "none"), progress=False)
    with pytest.raises(ConfigError, match="cross-model run cannot become a plain transformers model"):
        export_run(cross_run, tmp_path / "export")
    other = tmp_path / "other-source"  # another source model (and tokenizer) than the run was trained on
    build_cache(["the protein"], other, BuildConfig(model=other_bert_dir, layer=2), progress=False)
    with pytest.raises(CacheMismatchError, match="other states than the run"):
        load(cross_run, "cpu", "fp32").predict(["the protein"], cache=other)
    with pytest.raises(ConfigError, match="cross-model runs share a pass only"):
        plain = train(TrainConfig(task="classification", model=tiny_bert_dir, layer=2, epochs=1, batch_size=8,
                                  train=str(toy_classification["train"]), dev=str(toy_classification["dev"]),
                                  out=str(tmp_path / "plain"), cache=str(tmp_path / "c")), progress=False)  # fmt: skip
        TaskSet.load([cross_run, plain.run_dir])


def test_mlp_fusion_and_head_mode_train_the_fusion(
    tiny_bert_dir: str, toy_classification: dict[str, Path], source_cache: Path, tmp_path: Path
) -> None:
    run = train(_cfg(tmp_path, tiny_bert_dir, toy_classification, source_cache, fusion="mlp", upper="head", lr=1e-2,
                     epochs=1), progress=False).run_dir  # fmt: skip
    model = load(run, "cpu", "fp32").model
    assert model.fusion is not None and model.fusion.kind == "mlp"
    assert (
        float(model.fusion.down.weight.detach().abs().sum()) > 0
    )  # trained away from its zero start through frozen layers
    assert not any(p.requires_grad for layer in model.split.upper_layers() for p in layer.parameters())
    assert torch.is_tensor(model.fusion.up.weight)


def test_a_consumer_cut_at_layer_k_trains_only_the_layers_above_it(
    tiny_bert_dir: str, toy_classification: dict[str, Path], source_cache: Path, tmp_path: Path
) -> None:
    run = train(_cfg(tmp_path, tiny_bert_dir, toy_classification, source_cache, layer=2, epochs=1),
                progress=False).run_dir  # fmt: skip
    assert json.loads((Path(run) / "run.json").read_text())["states"]["layer"] == 2
    trained = load(run, "cpu", "fp32")
    got, pretrained = _as_pretrained_below_a_cut_at_2(trained, tiny_bert_dir)
    assert any(not torch.equal(got[n], pretrained[n]) for n in pretrained if ".layer.3." in n)  # above: trained
    assert trained.model.fusion is not None and float(trained.model.fusion.proj.weight[:, 32:].detach().abs().sum()) > 0
    docs = _texts(toy_classification["dev"])[:5]
    assert trained.predict(docs).hits == 5  # the dev documents were added to the source cache by training


def test_warm_start_takes_the_fusion_layer_of_a_run_on_the_same_source_states(
    tiny_bert_dir: str, other_bert_dir: str, toy_classification: dict[str, Path], source_cache: Path,
    cross_run: str, tmp_path: Path,
) -> None:  # fmt: skip
    from embrecycle.model import RecyclingModel
    from embrecycle.run import build_task_model
    from embrecycle.run_record import read_run_record
    from embrecycle.tasks.classification import ClassificationTask
    from embrecycle.training import warm_start

    labels = list(read_run_record(cross_run).labels)
    settings = open_cache(source_cache).settings

    def consumer() -> RecyclingModel:
        m = RecyclingModel(build_task_model(tiny_bert_dir, "classification", labels), ClassificationTask(labels), 0)
        m.add_fusion(settings.hidden_size, "linear")
        return m

    cfg = _cfg(tmp_path, tiny_bert_dir, toy_classification, source_cache, init_from=cross_run)
    model = consumer()
    loaded = warm_start(model, cross_run, cfg, settings)
    trained = load(cross_run, "cpu", "fp32").model.fusion
    assert model.fusion is not None and trained is not None and any(k.startswith("embrecycle_fusion.") for k in loaded)
    torch.testing.assert_close(model.fusion.proj.weight, trained.proj.weight)  # not the identity start
    plain_cfg = TrainConfig(task="classification", model=tiny_bert_dir, layer=0, epochs=1, batch_size=8,
                            baseline="full-finetune", train=str(toy_classification["train"]),
                            dev=str(toy_classification["dev"]), out=str(tmp_path / "plain"))  # fmt: skip
    plain = train(plain_cfg, progress=False)
    fresh = consumer()
    start = fresh.fusion.proj.weight.detach().clone()  # type: ignore[union-attr]
    assert not any(k.startswith("embrecycle_fusion.") for k in warm_start(fresh, plain.run_dir, cfg, settings))
    torch.testing.assert_close(fresh.fusion.proj.weight, start)  # type: ignore[union-attr]  # from a plain run: anew
    other = tmp_path / "other-source"
    build_cache(["the protein"], other, BuildConfig(model=other_bert_dir, layer=1), progress=False)
    with pytest.raises(ConfigError, match=r"fused other source states .* layer: 1 vs 2"):
        warm_start(consumer(), cross_run, cfg, open_cache(other).settings)


def test_resume_refuses_a_source_cache_that_now_holds_other_states(
    tiny_bert_dir: str, char_source_dir: str, toy_classification: dict[str, Path], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    import shutil

    from embrecycle.training import loop

    source = tmp_path / "source"
    texts = _texts(toy_classification["train"]) + _texts(toy_classification["dev"])
    build_cache(texts, source, BuildConfig(model=char_source_dir, layer=2), progress=False)
    cfg = _cfg(tmp_path, tiny_bert_dir, toy_classification, source, epochs=2)
    real = loop.save_resume_state

    def save_then_stop(*args: Any, **kwargs: Any) -> None:  # a kill right after the first resume state
        real(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "save_resume_state", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, progress=False)
    monkeypatch.setattr(loop, "save_resume_state", real)
    shutil.rmtree(source)  # rebuilt at another layer, at the same path
    build_cache(texts, source, BuildConfig(model=char_source_dir, layer=1), progress=False)
    with pytest.raises(ConfigError, match=r"--resume continues .* layer: 1 vs 2"):
        train(TrainConfig.from_dict({**cfg.to_dict(), "resume": True}), progress=False)


def test_a_source_cache_miss_fails_only_its_own_request_when_serving(
    cross_run: str, toy_classification: dict[str, Path]
) -> None:
    import asyncio

    from starlette.testclient import TestClient

    from embrecycle.serve import ServeConfig, build_app
    from embrecycle.serve.batcher import Batcher
    from embrecycle.serve.drift import DriftMonitor
    from embrecycle.serve.metrics import ServerMetrics

    cached, new = _texts(toy_classification["dev"])[:2], ["a sentence the source cache never saw"]
    config = ServeConfig(runs=[cross_run], max_wait_ms=1000)  # both requests wait for one batch
    tasks = TaskSet.load([cross_run], "cpu", "fp32")
    drift = {m.run_dir.name: DriftMonitor(m.record.label_counts, config.drift_window) for m in tasks.models}

    async def both() -> list[Any]:
        batcher = Batcher(tasks, None, config, ServerMetrics(), drift)
        batcher.start()
        try:
            return await asyncio.gather(
                batcher.submit(cached, tasks.names, 20), batcher.submit(new, tasks.names, 10), return_exceptions=True
            )
        finally:
            await batcher.stop()

    ok, missed = asyncio.run(both())
    assert isinstance(missed, CacheMissError) and "--update-cache" in str(missed)
    assert isinstance(ok, list) and len(ok) == 2 and all(row["cache_hit"] for row in ok)
    with TestClient(build_app(ServeConfig(runs=[cross_run]))) as client:
        r = client.post("/v1/predict", json={"documents": new})
    assert r.status_code == 422 and r.json()["error"]["kind"] == "source_cache_miss", r.text
    assert "embrecycle cache build --model" in r.json()["error"]["message"]


def test_evaluate_adds_missing_documents_with_update_cache(cross_run: str, source_cache: Path, tmp_path: Path) -> None:
    import shutil

    from embrecycle.data.readers import Example

    copy = tmp_path / "source"
    shutil.copytree(source_cache, copy)
    model = load(cross_run, "cpu", "fp32")
    label = str(model.record.labels[0])
    examples = [Example("an unseen protein sentence", label, "t:1"), Example("another unseen one", label, "t:2")]
    with pytest.raises(CacheMissError, match=r"--layer 2 .* --out"):
        model.evaluate(examples, cache=copy)
    scores = model.evaluate(examples, cache=copy, update_cache=True)
    assert scores["documents"] == 2 and scores["cache_misses"] == 2
    assert model.evaluate(examples, cache=copy)["cache_hits"] == 2


def test_the_source_location_is_recorded_absolute(source_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from embrecycle.source_states import source_record

    monkeypatch.chdir(source_cache.parent)
    assert source_record(open_cache("cache"), "linear")["location"] == str(source_cache.resolve())
    assert source_record(open_cache(f"file://{source_cache}"), "linear")["location"] == str(source_cache.resolve())


def test_a_ner_consumer_trains_on_word_aligned_source_states(
    tiny_bert_dir: str, char_source_dir: str, toy_ner: dict[str, Path], tmp_path: Path
) -> None:
    """NER end to end: word lists align within each word, the run predicts one tag per word after reloading."""
    from embrecycle.data.readers import read_examples

    source = tmp_path / "source"
    first = [e.doc for e in read_examples(toy_ner["train"])][:5]
    build_cache(first, source, BuildConfig(model=char_source_dir, layer=2), progress=False)
    cfg = _cfg(tmp_path, tiny_bert_dir, toy_ner, source, task="ner", epochs=4)
    result = train(cfg, progress=False)
    model = load(result.run_dir, "cpu", "fp32")
    assert model.model.fusion is not None and json.loads((Path(result.run_dir) / "run.json").read_text())["source"]
    dev = [e.doc for e in read_examples(toy_ner["dev"])]
    got = model.predict(dev[:4])
    assert got.hits == 4  # training put the dev documents in the source cache
    for doc, row in zip(dev[:4], got, strict=True):
        assert row is not None and row["words"] == list(doc) and len(row["tags"]) == len(doc)
    assert model.evaluate(model.read(toy_ner["dev"]))["f1"] == pytest.approx(result.best["f1"], abs=1e-6)


@pytest.fixture(scope="module")
def tiny_distilbert_dir(tiny_bert_dir: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Another family as the consumer: a 4-layer, 32-wide DistilBERT on the tiny BERT's WordPiece vocabulary."""
    from transformers import AutoConfig, AutoModel, DistilBertConfig

    d = tmp_path_factory.mktemp("tiny-distilbert")
    for f in Path(tiny_bert_dir).iterdir():
        if f.name.startswith(("vocab", "tokenizer", "special_tokens")):
            (d / f.name).write_bytes(f.read_bytes())
    vocab = AutoConfig.from_pretrained(tiny_bert_dir).vocab_size
    config = DistilBertConfig(
        vocab_size=vocab, dim=32, n_layers=4, n_heads=4, hidden_dim=37, max_position_embeddings=64
    )
    torch.manual_seed(0)
    AutoModel.from_config(config).save_pretrained(d)
    return str(d)


def test_another_family_consumes_with_lora_above_a_cut(
    tiny_distilbert_dir: str, toy_classification: dict[str, Path], source_cache: Path, tmp_path: Path
) -> None:
    """A DistilBERT consumer with LoRA in its layers above a cut at 2: the fusion and LoRA train, the rest stays."""
    cfg = _cfg(tmp_path, tiny_distilbert_dir, toy_classification, source_cache, layer=2, upper="lora", lr=1e-2,
               epochs=2)  # fmt: skip
    result = train(cfg, progress=False)
    trained = load(result.run_dir, "cpu", "fp32")
    fusion = trained.model.fusion
    assert fusion is not None and float(fusion.proj.weight[:, 32:].detach().abs().sum()) > 0
    _as_pretrained_below_a_cut_at_2(trained, tiny_distilbert_dir)
    docs = _texts(toy_classification["dev"])[:6]
    first, again = trained.predict(docs), load(result.run_dir, "cpu", "fp32").predict(docs)
    assert first.hits == 6
    for a, b in zip(first, again, strict=True):
        assert a is not None and b is not None and a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-6)


def test_a_source_cache_of_another_tokenizer_is_named(
    tiny_bert_dir: str, wide_bert_dir: str, char_source_dir: str, toy_classification: dict[str, Path], tmp_path: Path
) -> None:
    """The same source weights at the same layer, tokenized otherwise: refused, naming the tokenizer."""
    source = tmp_path / "model"  # one path (the settings' model id), its tokenizer swapped between two caches
    import shutil

    shutil.copytree(char_source_dir, source)
    texts = _texts(toy_classification["train"]) + _texts(toy_classification["dev"])
    build_cache(texts, tmp_path / "chars", BuildConfig(model=str(source), layer=2), progress=False)
    run = train(_cfg(tmp_path, tiny_bert_dir, toy_classification, tmp_path / "chars", epochs=1), progress=False)
    for f in Path(wide_bert_dir).iterdir():  # the wide BERT's own WordPiece tokenizer, same weights
        if f.name.startswith(("vocab", "tokenizer", "special_tokens")):
            (source / f.name).write_bytes(f.read_bytes())
    build_cache(texts[:3], tmp_path / "words", BuildConfig(model=str(source), layer=2), progress=False)
    with pytest.raises(CacheMismatchError, match="tokenizer") as err:
        load(run.run_dir, "cpu", "fp32").predict(texts[:3], cache=tmp_path / "words")
    assert "model:" not in str(err.value) and "layer:" not in str(err.value)  # only what differs is named
