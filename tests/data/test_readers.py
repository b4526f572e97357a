"""Input files: every format, and a clear error with file and line for every bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from embrecycle import InputDataError
from embrecycle.data import read_examples
from embrecycle.data.conll import entity_spans, normalize_tags


def test_jsonl_csv_tsv_txt(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text('{"text": "one", "label": "x"}\n\n{"text": "two"}\n')
    (tmp_path / "a.csv").write_text('text,label\n"one, with comma",x\ntwo,\n')
    (tmp_path / "a.tsv").write_text("body\tlabel\none\tx\n")
    (tmp_path / "a.txt").write_text("one\ntwo\n")
    assert [(e.doc, e.label) for e in read_examples(tmp_path / "a.jsonl")] == [("one", "x"), ("two", None)]
    assert [(e.doc, e.label) for e in read_examples(tmp_path / "a.csv")] == [("one, with comma", "x"), ("two", None)]
    assert [e.doc for e in read_examples(tmp_path / "a.tsv", text_field="body")] == ["one"]
    assert [e.doc for e in read_examples(tmp_path / "a.txt")] == ["one", "two"]
    assert read_examples(tmp_path / "a.jsonl")[1].source.endswith("a.jsonl:3")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.jsonl", '{"text": "ok"}\n{"text": \n', r"bad.jsonl:2: not valid JSON"),
        ("nofield.jsonl", '{"body": "x"}\n', r"nofield.jsonl:1: no field 'text'; fields are \['body'\]"),
        ("num.jsonl", '{"text": 3}\n', r"is int, not a string"),
        ("nofield.csv", "body\nx\n", r"no column 'text'"),
        ("x.unknown", "x", r"cannot tell the format"),
    ],
)
def test_bad_files_name_the_line_and_the_fix(tmp_path: Path, name: str, content: str, message: str) -> None:
    (tmp_path / name).write_text(content)
    with pytest.raises(InputDataError, match=message):
        read_examples(tmp_path / name)


def test_invalid_utf8_names_the_line(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_bytes(b"fine\nbad \xff byte\n")
    with pytest.raises(InputDataError, match=r"a.txt:2: invalid UTF-8"):
        read_examples(tmp_path / "a.txt")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputDataError, match="does not exist"):
        read_examples(tmp_path / "nope.jsonl")


def test_conll_sentences_docstart_and_tags(tmp_path: Path) -> None:
    (tmp_path / "a.conll").write_text(
        "-DOCSTART- (1)\n\nAspirin\tNN\tO\tI-Chem\ncauses\tVB\tO\tO\nulcers\tNN\tO\tI-Dis\n\nOK\tNN\tO\tO\n"
    )
    ex = read_examples(tmp_path / "a.conll")
    assert [e.doc for e in ex] == [["Aspirin", "causes", "ulcers"], ["OK"]]
    assert ex[0].label == ["B-Chem", "O", "B-Dis"]  # IOB1 normalised to IOB2
    assert ex[0].source.endswith("a.conll:3")


def test_malformed_conll_line(tmp_path: Path) -> None:
    (tmp_path / "a.conll").write_text("a\tO\nb\tNN\tO\n")
    with pytest.raises(InputDataError, match=r"a.conll:2: malformed CoNLL line"):
        read_examples(tmp_path / "a.conll")
    (tmp_path / "b.conll").write_text("a\tX-Chem\n")
    with pytest.raises(InputDataError, match="tag 'X-Chem'"):
        read_examples(tmp_path / "b.conll")


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        (["I-A", "I-A", "O", "I-B", "B-B"], ["B-A", "I-A", "O", "B-B", "B-B"]),  # IOB1
        (["B-A", "I-A", "I-B"], ["B-A", "I-A", "B-B"]),  # IOB2 (type change starts an entity)
        (["S-A", "B-A", "I-A", "E-A", "S-A"], ["B-A", "B-A", "I-A", "I-A", "B-A"]),  # BIOES
        (["U-A", "B-A", "L-A"], ["B-A", "B-A", "I-A"]),  # BILOU
    ],
)
def test_tag_schemes_normalise_to_iob2(tags: list[str], expected: list[str]) -> None:
    assert normalize_tags(tags) == expected


def test_entity_spans() -> None:
    assert entity_spans(["B-A", "I-A", "O", "B-B", "B-B", "I-B"]) == [("A", 0, 2), ("B", 3, 4), ("B", 4, 6)]
