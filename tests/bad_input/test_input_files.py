"""Bad input files and model paths: a clear error (or warning) naming the value, the place and the fix."""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from embrecycle.cli import app
from embrecycle.data import read_examples
from embrecycle.encoder import load_encoder, load_tokenizer, position_limit
from embrecycle.errors import ConfigError, InputDataError, ModelLoadError
from embrecycle.progress import set_quiet
from embrecycle.tokenization import encode_documents
from embrecycle.training.config import TrainConfig
from embrecycle.training.data import read_data
from tiny_models import tiny_configs

runner = CliRunner()


def _config(tmp_path: Path, train: Path, dev: Path, task: str = "classification", **kw: object) -> TrainConfig:
    return TrainConfig(
        task=task, model="unused", layer=2, train=str(train), dev=str(dev), out=str(tmp_path / "r"), **kw
    )


def _jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# --- 4. CSV: a stray quote must not merge rows silently ---------------------------------------------------------


def _rows(n: int) -> list[str]:
    return [f"document number {i},{'pos' if i % 2 else 'neg'}" for i in range(n)]


def test_csv_stray_quote_to_the_end_of_file_names_its_line(tmp_path: Path) -> None:
    rows = _rows(30)
    rows[9] = '"document number 9,pos'  # opened, never closed: the other 20 rows would merge into it
    (tmp_path / "a.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    with pytest.raises(InputDataError, match=r"a\.csv:11: a quoted field .* never closed"):
        read_examples(tmp_path / "a.csv")


def test_csv_stray_quote_closed_by_a_later_quote_is_an_error(tmp_path: Path) -> None:
    rows = _rows(30)
    rows[4] = '"stray quote,pos'
    rows[20] = '"a quoted, text",neg'  # its opening quote closes the stray one, and text follows it
    (tmp_path / "a.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    with pytest.raises(InputDataError, match=r"a\.csv:\d+: malformed CSV row \(starting on line 6\)"):
        read_examples(tmp_path / "a.csv")


def test_csv_quote_swallowing_whole_rows_is_an_error(tmp_path: Path) -> None:
    text = 'text,label\nfirst,pos\n"stray,pos\nswallowed,neg\nends here",neg\nlast,pos\n'
    (tmp_path / "a.csv").write_text(text)
    with pytest.raises(InputDataError, match=r"a\.csv:3: a quote opens a field that runs on over 3 lines"):
        read_examples(tmp_path / "a.csv")


def test_csv_legitimate_multi_line_fields_and_quotes_are_kept(tmp_path: Path) -> None:
    text = 'text,label\n"line one, with a comma\nline two",pos\n"say ""hi"", twice",neg\n"a\nb\nc",pos\nlast,neg\n'
    (tmp_path / "a.csv").write_text(text)
    ex = read_examples(tmp_path / "a.csv")
    assert [e.doc for e in ex] == ["line one, with a comma\nline two", 'say "hi", twice', "a\nb\nc", "last"]
    assert [e.source.rsplit(":", 1)[1] for e in ex] == ["2", "4", "5", "8"]  # the line each row starts on


def test_csv_with_a_byte_order_mark_finds_its_text_column(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_bytes("\ufefftext,label\nfine,pos\n".encode())
    assert [(e.doc, e.label) for e in read_examples(tmp_path / "a.csv")] == [("fine", "pos")]


def test_csv_row_with_the_wrong_number_of_fields(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("text,label\nfine,pos\nan unquoted, comma,neg\n")
    with pytest.raises(InputDataError, match=r"a\.csv:3: 3 fields, but the header has 2 \(\['text', 'label'\]\)"):
        read_examples(tmp_path / "a.csv")


# --- 5. labels: strings, integers and booleans ---------------------------------------------------------------------


def test_labels_integers_integral_floats_and_booleans(tmp_path: Path) -> None:
    rows = [{"text": "a", "label": 1}, {"text": "b", "label": 1.0}, {"text": "c", "label": True}]
    rows += [{"text": "d", "label": "x"}, {"text": "e", "label": None}, {"text": "f"}]
    ex = read_examples(_jsonl(tmp_path / "a.jsonl", rows))
    assert [e.label for e in ex] == ["1", "1", "true", "x", None, None]
    assert ex[4].missing_label == "field 'label' is null; fields are ['label', 'text']"
    assert ex[5].missing_label == "no field 'label'; fields are ['text']"


@pytest.mark.parametrize(
    ("label", "shown"), [(["x"], r"a list \(\[\"x\"\]\)"), ({"a": 1}, "an object"), (1.5, "a non-integral number")]
)
def test_labels_lists_objects_and_fractions_are_errors(tmp_path: Path, label: object, shown: str) -> None:
    path = _jsonl(tmp_path / "a.jsonl", [{"text": "a", "label": "x"}, {"text": "b", "label": label}])
    with pytest.raises(InputDataError, match=rf"a\.jsonl:2: field 'label' is {shown}.*string, integer or boolean"):
        read_examples(path)


# --- 6. max_length above the model's position limit ----------------------------------------------------------------


def test_max_length_above_the_position_limit_is_refused_at_load(tiny_bert_dir: str) -> None:
    with pytest.raises(ConfigError, match=r"max_length=100000 .* at most 64 tokens .*--max-length 64"):
        load_encoder(tiny_bert_dir, 2, max_length=100000)
    with pytest.raises(ConfigError, match=r"max_length=65 .*--max-length 64"):
        load_tokenizer(tiny_bert_dir, "bert", max_length=65)
    tok = load_tokenizer(tiny_bert_dir, "bert", max_length=64)
    with pytest.raises(ConfigError, match=r"max_length=100000 .*max_position_embeddings=64.*--max-length 64"):
        encode_documents(tok, ["the model"], 100000)  # every path that tokenizes goes through this check
    configs = tiny_configs()
    assert position_limit(configs["bert"]) == (128, "max_position_embeddings=128")
    assert position_limit(configs["roberta"])[0] == 126  # type: ignore[index]  # positions start after padding
    configs["deberta-v2"].position_biased_input = False  # relative positions only: no absolute limit
    assert position_limit(configs["deberta-v2"]) is None


def test_max_length_above_the_limit_on_the_command_line(tiny_bert_dir: str, tmp_path: Path) -> None:
    data = _jsonl(tmp_path / "d.jsonl", [{"text": "the model " * 80}])
    args = ["cache", "build", "--model", tiny_bert_dir, "--layer", "2", "--data", str(data), "--max-length", "100000"]
    r = runner.invoke(app, [*args, "--out", str(tmp_path / "c"), "-q"])
    assert r.exit_code == 2 and "--max-length 64" in r.output and "Traceback" not in r.output, r.output


LIMIT_MESSAGE = r"max_length=100000 \(more than the model .* takes: at most 64 tokens .*--max-length 64 or less"


def test_max_length_above_the_limit_is_refused_when_the_settings_are_made(tiny_bert_dir: str, tmp_path: Path) -> None:
    from embrecycle.selection import SelectConfig

    files = {"train": str(tmp_path / "absent.jsonl"), "dev": str(tmp_path / "absent.jsonl")}
    with pytest.raises(ConfigError, match=LIMIT_MESSAGE):
        TrainConfig(
            task="classification", model=tiny_bert_dir, layer=2, out=str(tmp_path / "r"), max_length=100000, **files
        )
    with pytest.raises(ConfigError, match=LIMIT_MESSAGE):
        SelectConfig(task="classification", model=tiny_bert_dir, out=str(tmp_path / "s"), max_length=100000, **files)
    TrainConfig(task="classification", model=tiny_bert_dir, layer=2, out=str(tmp_path / "r"), max_length=64, **files)
    TrainConfig(task="classification", model="no/such-model", layer=2, out="r", max_length=100000, **files)  # load says
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("command", ["train", "select-layer"])
def test_max_length_above_the_limit_fails_before_any_work(
    tiny_bert_dir: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    monkeypatch.setenv("EMBRECYCLE_CACHE_HOME", str(tmp_path / "caches"))
    data = _jsonl(tmp_path / "d.jsonl", [{"text": "the model", "label": "x"}, {"text": "the data", "label": "y"}])
    args = [command, "--task", "classification", "--model", tiny_bert_dir, "--train", str(data), "--dev", str(data)]
    args += ["--layer", "2"] if command == "train" else []
    r = runner.invoke(app, [*args, "--out", str(tmp_path / "out"), "--max-length", "100000", "-q"])
    assert r.exit_code == 2, r.output
    assert "max_length=100000" in r.output and "at most 64" in r.output and "--max-length 64" in r.output
    assert "Traceback" not in r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.jsonl"]  # no run, staging directory or cache


# --- 7. tracebacks where a message belongs ----------------------------------------------------------------------


def test_lone_surrogate_in_json_names_the_line(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text('{"text": "fine"}\n{"text": "\\ud800"}\n')
    with pytest.raises(InputDataError, match=r"a\.jsonl:2: field 'text' holds a lone UTF-16 surrogate \(\\ud800"):
        read_examples(tmp_path / "a.jsonl")
    (tmp_path / "b.jsonl").write_text('{"text": "\\ud83d\\ude00 paired is fine", "label": "\\udfff"}\n')
    with pytest.raises(InputDataError, match=r"b\.jsonl:1: field 'label'"):
        read_examples(tmp_path / "b.jsonl")


def test_classification_given_conll_and_ner_given_texts(tmp_path: Path) -> None:
    conll = tmp_path / "a.conll"
    conll.write_text("the\tO\nprotein\tB-Chem\n\nthe\tO\n")
    with pytest.raises(InputDataError, match=r"a\.conll: the classification task needs one text and one label.*"):
        read_data(_config(tmp_path, conll, conll))
    texts = _jsonl(tmp_path / "t.jsonl", [{"text": "a b", "label": "x"}, {"text": "c", "label": "y"}])
    with pytest.raises(InputDataError, match=r"t\.jsonl: NER needs CoNLL input \(--task ner.*label 'x'"):
        read_data(_config(tmp_path, texts, texts, task="ner"))


def _evil_model(tiny_bert_dir: str, tmp_path: Path) -> tuple[Path, Path]:
    model, marker = tmp_path / "evil", tmp_path / "PWNED"
    shutil.copytree(tiny_bert_dir, model)
    (model / "model.safetensors").unlink()

    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return os.system, (f"touch {marker}",)

    (model / "pytorch_model.bin").write_bytes(pickle.dumps(Evil()))
    return model, marker


def test_pickle_only_model_is_refused_with_the_fix(tiny_bert_dir: str, tmp_path: Path) -> None:
    from embrecycle.run import build_task_model

    model, marker = _evil_model(tiny_bert_dir, tmp_path)
    with pytest.raises(ModelLoadError, match=r"only pickle weights \(pytorch_model\.bin\).*safetensors only.*"):
        load_encoder(str(model), 2)
    with pytest.raises(ModelLoadError, match=r"save_pretrained"):
        build_task_model(str(model), "classification", ["a", "b"])  # training and prediction load this way
    assert not marker.exists()


def test_missing_local_model_path_says_the_directory_does_not_exist(tmp_path: Path) -> None:
    for name in ("./no/such/model", str(tmp_path / "nope"), "~/no-such-model-dir"):
        with pytest.raises(ModelLoadError, match=r"local model directory does not exist") as e:
            load_encoder(name, 2)
        assert "Repo id must be" not in str(e.value)


# --- 8. silent truncation, label fields, CoNLL lines, duplicates, quiet -----------------------------------------


def test_truncation_is_warned_once_with_documents_and_words(
    tiny_bert_dir: str, caplog: pytest.LogCaptureFixture
) -> None:
    tok = load_tokenizer(tiny_bert_dir, "bert")
    docs: list[str | list[str]] = [["the"] * 20, ["a", "b"], "the model " * 10]
    with caplog.at_level(logging.WARNING, logger="embrecycle"):
        enc = encode_documents(tok, docs, 12, sources=["x:1", "x:3", "x:4"])
    assert [e.truncated for e in enc] == [True, False, True]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "2 of 3 documents are longer than max_length=12" in warnings[0]
    assert "20 words" in warnings[0] and "the first is x:1" in warnings[0] and "--max-length" in warnings[0]
    assert "tagged O" in warnings[0]  # the first cut document is a word list (NER)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="embrecycle"):
        encode_documents(tok, ["the model " * 10], 12)
    (text,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "1 of 1 documents" in text and "tagged O" not in text  # a text: no NER note


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "longer than max_length" in r.getMessage()
    ]


def test_training_counts_truncated_documents_also_when_they_come_from_the_cache(
    tiny_bert_dir: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from embrecycle.training import train

    texts = [("the model " * 20 if i % 3 == 0 else "the data ") + "of " * i for i in range(8)]
    rows = [{"text": text, "label": "xy"[i % 2]} for i, text in enumerate(texts)]
    data = _jsonl(tmp_path / "d.jsonl", rows)  # documents 0, 3 and 6 (lines 1, 4, 7) are over 16 tokens

    def config(name: str) -> TrainConfig:
        return TrainConfig(
            task="classification", model=tiny_bert_dir, layer=2, train=str(data), dev=str(data),
            out=str(tmp_path / name), cache=str(tmp_path / "cache"), epochs=1, batch_size=4, max_length=16,
            device="cpu", precision="fp32",
        )  # fmt: skip

    for name in ("builds-the-cache", "reads-the-cache"):  # the second run computes nothing: every state is cached
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="embrecycle"):
            result = train(config(name), progress=False)
        warnings = _warnings(caplog)
        assert len(warnings) == 2, warnings  # one for the training file, one for the dev file: not one per build
        assert all("3 of 8 documents are longer than max_length=16" in w for w in warnings), warnings
        assert "the first is " + str(data) + ":1" in warnings[0]
        assert (result.train_truncated, result.dev_truncated) == (3, 3)
        assert "3 train and 3 dev documents were longer than max_length" in result.summary()
        metrics = json.loads((tmp_path / name / "metrics.json").read_text())
        assert (metrics["train_truncated"], metrics["dev_truncated"]) == (3, 3)


def test_ner_prediction_warns_about_words_beyond_max_length(
    tiny_bert_dir: str, toy_ner: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import embrecycle
    from embrecycle.training import train

    config = TrainConfig(
        task="ner", model=tiny_bert_dir, layer=2, train=str(toy_ner["train"]), dev=str(toy_ner["dev"]),
        out=str(tmp_path / "run"), cache=str(tmp_path / "cache"), epochs=1, batch_size=8, max_length=16,
        device="cpu", precision="fp32",
    )  # fmt: skip
    train(config, progress=False)
    model = embrecycle.load(tmp_path / "run", device="cpu", precision="fp32")
    long_doc, short_doc = ["the", "protein", "of"] * 10, ["the", "protein"]
    for update_cache in (True, False):  # tokenized now (and stored), then read back from the cache
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="embrecycle"):
            preds = model.predict([long_doc, short_doc], update_cache=update_cache)
        assert preds.hits == (0 if update_cache else 2)
        warnings = _warnings(caplog)
        assert len(warnings) == 1, warnings
        assert "1 of 2 documents are longer than max_length=16" in warnings[0]
        assert "16 words at their ends are not seen by the model (they are tagged O" in warnings[0], warnings[0]
        assert len(preds[0]["tags"]) == len(long_doc) and set(preds[0]["tags"][14:]) == {"O"}


@pytest.mark.parametrize("keep", [0, 4, 0.5])
def test_a_truncated_base_model_is_named(tiny_bert_dir: str, tmp_path: Path, keep: float) -> None:
    from embrecycle.run import build_task_model

    model = shutil.copytree(tiny_bert_dir, tmp_path / "model")
    weights = model / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: int(keep * len(data)) if keep < 1 else int(keep)])
    message = rf"{weights} is truncated or damaged .*Copy or save the model there again"
    with pytest.raises(ModelLoadError, match=message):
        load_encoder(str(model), 2)  # cache build, select-layer
    with pytest.raises(ModelLoadError, match=message):
        build_task_model(str(model), "classification", ["x", "y"])  # train, and every reader of a run
    data_file = _jsonl(tmp_path / "d.jsonl", [{"text": "the model"}])
    r = runner.invoke(app, ["cache", "build", "--model", str(model), "--layer", "2", "--data", str(data_file),
                            "--out", str(tmp_path / "c"), "-q"])  # fmt: skip
    assert r.exit_code == 2 and "model.safetensors is truncated or damaged" in r.output, r.output
    assert "Traceback" not in r.output


def test_a_misspelt_label_field_names_the_field_and_the_columns(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("text,label\nthe model,x\nthe data,y\n")
    with pytest.raises(InputDataError, match=r"no column 'labl'; columns are \['text', 'label'\].*--label-field"):
        read_data(_config(tmp_path, tmp_path / "a.csv", tmp_path / "a.csv", label_field="labl"))
    rows = _jsonl(tmp_path / "a.jsonl", [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}])
    with pytest.raises(InputDataError, match=r"a\.jsonl:1: no field 'tag'; fields are \['label', 'text'\]"):
        read_data(_config(tmp_path, rows, rows, label_field="tag"))


def test_conll_tag_error_cites_the_bad_line(tmp_path: Path) -> None:
    (tmp_path / "a.conll").write_text("the\tO\nprotein\tB-Chem\nof\tO\nthe\tbogus\n")
    with pytest.raises(InputDataError, match=r"a\.conll:4: tag 'bogus'"):
        read_examples(tmp_path / "a.conll")


def test_conflicting_duplicate_labels_are_warned(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rows = [
        {"text": "the model", "label": "x"},
        {"text": "the data", "label": "y"},
        {"text": "the model", "label": "y"},
    ]
    path = _jsonl(tmp_path / "a.jsonl", [*rows, {"text": "the data", "label": "y"}])
    with caplog.at_level(logging.WARNING, logger="embrecycle"):
        read_data(_config(tmp_path, path, path))
    text = caplog.text
    assert "1 documents appear more than once with different labels" in text
    assert "a.jsonl:1 ('x') and " in text and "a.jsonl:3 ('y')" in text


def test_empty_training_documents_are_skipped_with_their_place(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = _jsonl(
        tmp_path / "a.jsonl", [{"text": "a", "label": "x"}, {"text": " ", "label": "y"}, {"text": "b", "label": "y"}]
    )
    with caplog.at_level(logging.WARNING, logger="embrecycle"):
        data = read_data(_config(tmp_path, path, path))
    assert (
        len(data.train) == 2 and "skipped 1 empty documents (the first at" in caplog.text and "a.jsonl:2" in caplog.text
    )


def test_quiet_silences_transformers_and_hub_bars() -> None:
    from huggingface_hub.utils import are_progress_bars_disabled
    from transformers.utils import logging as hf_logging

    try:
        set_quiet(True)
        assert not hf_logging.is_progress_bar_enabled() and are_progress_bars_disabled()
        assert type(hf_logging.tqdm(range(3))).__name__ == "EmptyTqdm"  # the "Loading weights" bar
    finally:
        set_quiet(False)
    assert hf_logging.is_progress_bar_enabled()


def test_an_over_long_max_length_leaves_no_cache_behind(tiny_bert_dir: str, tmp_path: Path) -> None:
    from embrecycle import BuildConfig, ConfigError, build_cache

    with pytest.raises(ConfigError, match="max_length=100000"):
        build_cache(["a document"], tmp_path / "cache", BuildConfig(model=tiny_bert_dir, layer=1, max_length=100000))
    assert not (tmp_path / "cache").exists()  # the re-run with a valid value starts clean
    build_cache(["a document"], tmp_path / "cache", BuildConfig(model=tiny_bert_dir, layer=1, max_length=32))
