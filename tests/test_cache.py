"""The cache: content keys, reuse, integrity, mismatches, formats and padded batch reads."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from embrecycle import (
    BuildConfig,
    BuildSummary,
    CacheCorruptedError,
    CacheMismatchError,
    CacheMissError,
    InputDataError,
    ModelLoadError,
    build_cache,
    load_encoder,
    open_cache,
)
from embrecycle.cache.format import HEADER_SIZE, RECORD_SIZE
from embrecycle.cache.shard import shard_paths
from embrecycle.cache.store import Document


def _build(model: str, docs: Sequence[Document], out: Path, **kw: Any) -> BuildSummary:
    cfg = BuildConfig(model=model, layer=kw.pop("layer", 2), batch_size=kw.pop("batch_size", 8), **kw)
    return build_cache(docs, out, cfg, progress=False)


def test_states_equal_a_direct_forward_of_the_document(tiny_bert_dir: str, texts: list[str], tmp_path: Path) -> None:
    summary = _build(tiny_bert_dir, texts, tmp_path / "c", dtype="float32")
    assert summary.computed == len(set(texts)) and summary.reused == 0
    cache = open_cache(tmp_path / "c")
    enc = load_encoder(tiny_bert_dir, 2)
    for text in texts[:5]:
        ids = enc.tokenizer(text, return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            ref = enc.split.lower(ids, torch.ones_like(ids))[0].numpy()
        doc = cache.get(text)
        assert doc.input_ids.tolist() == ids[0].tolist()
        np.testing.assert_allclose(doc.hidden, ref, atol=1e-5)
        assert doc.word_ids[0] == -1 and doc.word_ids[-1] == -1  # [CLS], [SEP]
        start, end = doc.offsets[1]
        assert text[start:end].lower() == enc.tokenizer.convert_ids_to_tokens(int(doc.input_ids[1])).lstrip("#")


def test_rebuild_is_idempotent_and_incremental(tiny_bert_dir: str, texts: list[str], tmp_path: Path) -> None:
    out = tmp_path / "c"
    first = _build(tiny_bert_dir, texts[:40], out)
    shard = shard_paths(out, "local-00000")
    before = {p: p.read_bytes() for p in (shard["hidden"], shard["tokens"], shard["index"])}
    again = _build(tiny_bert_dir, list(reversed(texts[:40])), out, batch_size=3)  # reshuffled, re-batched
    assert again.computed == 0 and again.reused == first.computed
    assert {p: p.read_bytes() for p in before} == before
    more = _build(tiny_bert_dir, texts, out)
    assert more.computed == len(set(texts)) - len(set(texts[:40]))
    assert len(open_cache(out)) == len(set(texts))


def test_moved_directory_still_hits(tiny_bert_dir: str, texts: list[str], tmp_path: Path) -> None:
    _build(tiny_bert_dir, texts[:10], tmp_path / "a")
    shutil.move(tmp_path / "a", tmp_path / "b")
    assert all(t in open_cache(tmp_path / "b") for t in texts[:10])
    assert _build(tiny_bert_dir, texts[:10], tmp_path / "b").computed == 0


def test_empty_duplicate_and_truncated_documents(tiny_bert_dir: str, tmp_path: Path) -> None:
    long = " ".join(["protein"] * 100)
    docs = ["the model", "", "   ", "the model", long]
    s = _build(tiny_bert_dir, docs, tmp_path / "c", max_length=16)
    assert (s.computed, s.skipped_empty, s.duplicates, s.truncated) == (2, 2, 1, 1)
    doc = open_cache(tmp_path / "c").get(long)
    assert doc.truncated and len(doc.input_ids) == 16
    with pytest.raises(InputDataError, match="exceed max_length=16"):
        _build(tiny_bert_dir, [long], tmp_path / "d", max_length=16, truncation="error")


def test_pretokenized_words_keep_word_ids(tiny_bert_dir: str, tmp_path: Path) -> None:
    words = ["The", "protein", "xyz", "binds", "."]
    _build(tiny_bert_dir, [words], tmp_path / "c")
    cache = open_cache(tmp_path / "c")
    doc = cache.get(words)
    assert "The protein xyz binds ." not in cache  # words and text are distinct documents
    real = doc.word_ids[doc.word_ids >= 0]
    assert sorted(set(real.tolist())) == [0, 1, 2, 3, 4]
    assert (np.diff(real) >= 0).all()


@pytest.mark.parametrize(
    ("change", "setting"),
    [({"layer": 3}, "layer"), ({"max_length": 32}, "max_length"), ({"dtype": "float32"}, "dtype")],
)
def test_mismatched_settings_are_named(tiny_bert_dir: str, tmp_path: Path, change: dict, setting: str) -> None:
    _build(tiny_bert_dir, ["the model"], tmp_path / "c")
    with pytest.raises(CacheMismatchError, match=setting) as err:
        _build(tiny_bert_dir, ["the model"], tmp_path / "c", **change)
    assert "cache has" in str(err.value) and "requested" in str(err.value)


def test_other_weights_are_a_mismatch(tiny_bert_dir: str, other_bert_dir: str, tmp_path: Path) -> None:
    _build(tiny_bert_dir, ["the model"], tmp_path / "c")
    with pytest.raises(CacheMismatchError, match="lower_fingerprint"):
        _build(other_bert_dir, ["the model"], tmp_path / "c")


def test_missing_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does-not-exist"):
        _build(str(tmp_path / "does-not-exist"), ["x"], tmp_path / "c")
    assert not (tmp_path / "c").exists()


def test_miss_raises_keyerror(tiny_bert_dir: str, tmp_path: Path) -> None:
    _build(tiny_bert_dir, ["the model"], tmp_path / "c")
    with pytest.raises(CacheMissError):
        open_cache(tmp_path / "c").get("not there")
    with pytest.raises(KeyError):
        open_cache(tmp_path / "c").get("not there")


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_read_batch_repads_on_the_right(tiny_bert_dir: str, texts: list[str], tmp_path: Path, dtype: str) -> None:
    _build(tiny_bert_dir, texts[:12], tmp_path / "c", dtype=dtype)
    cache = open_cache(tmp_path / "c")
    batch = cache.read_batch([3, 0, 7])
    lens = cache.lengths[[3, 0, 7]]
    assert batch.hidden.shape == (3, lens.max(), 32) and batch.hidden.dtype == torch.float32
    assert batch.attention_mask.sum(1).tolist() == lens.tolist()
    for j, i in enumerate([3, 0, 7]):
        doc = cache.read(i)
        assert torch.equal(batch.hidden[j, : lens[j]], torch.from_numpy(doc.hidden))
        assert batch.hidden[j, lens[j] :].abs().sum() == 0
        assert (batch.word_ids[j, lens[j] :] == -1).all()


def test_float16_states_are_close_to_float32(tiny_bert_dir: str, texts: list[str], tmp_path: Path) -> None:
    _build(tiny_bert_dir, texts[:5], tmp_path / "h", dtype="float16")
    _build(tiny_bert_dir, texts[:5], tmp_path / "f", dtype="float32")
    h, f = open_cache(tmp_path / "h"), open_cache(tmp_path / "f")
    for t in texts[:5]:
        np.testing.assert_allclose(h.get(t).hidden, f.get(t).hidden, atol=5e-3)


def _corrupt(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_corrupted_states_are_reported_by_verify_and_read(tiny_bert_dir: str, texts: list[str], tmp_path: Path):
    out = tmp_path / "c"
    _build(tiny_bert_dir, texts[:10], out)
    assert open_cache(out).verify().ok
    _corrupt(shard_paths(out, "local-00000")["hidden"], 100)
    cache = open_cache(out)
    report = cache.verify()
    assert not report.ok and "local-00000" in report.problems[0] and "checksum" in report.problems[0]
    bad = next(i for i in range(len(cache)) if cache.rows[i] == 0)
    with pytest.raises(CacheCorruptedError, match="checksum mismatch"):
        cache.read(bad)
    # repair drops the damaged entry; the next build recomputes exactly that one
    assert cache.verify(repair=True).repaired_entries == 1
    assert open_cache(out).verify().ok
    assert _build(tiny_bert_dir, texts[:10], out).computed == 1


def test_truncated_data_file_is_reported(tiny_bert_dir: str, texts: list[str], tmp_path: Path) -> None:
    out = tmp_path / "c"
    _build(tiny_bert_dir, texts[:10], out)
    hidden = shard_paths(out, "local-00000")["hidden"]
    with open(hidden, "r+b") as f:
        f.truncate(hidden.stat().st_size - 1000)
    cache = open_cache(out)
    assert any("truncated" in p for p in cache.verify().problems)
    last = int(np.argmax(cache.rows))
    with pytest.raises(CacheCorruptedError, match="truncated"):
        cache.read(last)
    with pytest.raises(CacheCorruptedError, match="truncated"):
        _build(tiny_bert_dir, texts, out)  # the writer refuses to append after lost data


def test_torn_index_record_is_ignored_and_dropped_on_resume(tiny_bert_dir: str, texts: list[str], tmp_path: Path):
    out = tmp_path / "c"
    _build(tiny_bert_dir, texts[:10], out)
    index = shard_paths(out, "local-00000")["index"]
    n = (index.stat().st_size - HEADER_SIZE) // RECORD_SIZE
    with open(index, "r+b") as f:  # simulate a write killed in the middle of the last record
        f.truncate(HEADER_SIZE + (n - 1) * RECORD_SIZE + 20)
    assert len(open_cache(out)) == n - 1
    assert _build(tiny_bert_dir, texts[:10], out).computed == 1
    assert open_cache(out).verify().ok


def test_manifest_describes_the_cache(tiny_bert_dir: str, texts: list[str], tmp_path: Path) -> None:
    _build(tiny_bert_dir, texts[:10], tmp_path / "c")
    m = json.loads((tmp_path / "c" / "manifest.json").read_text())
    s = m["settings"]
    assert m["format"] == "embrecycle-cache" and m["format_version"] == 1 and m["library_version"]
    assert (s["layer"], s["num_layers"], s["hidden_size"], s["dtype"]) == (2, 4, 32, "float16")
    assert s["model"] == tiny_bert_dir and len(s["lower_fingerprint"]) == 64 and len(s["tokenizer_fingerprint"]) == 64
    assert m["stats"]["documents"] == len(set(texts[:10])) and m["stats"]["bytes"] > 0


def test_not_a_cache(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"manifest\.json is missing"):
        open_cache(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(CacheCorruptedError):
        open_cache(tmp_path)


def test_duplicates_of_cached_documents_count_once(tiny_bert_dir: str, tmp_path: Path) -> None:
    _build(tiny_bert_dir, ["the model"], tmp_path / "c")
    s = _build(tiny_bert_dir, ["the model", "the model", "a method"], tmp_path / "c")
    assert (s.reused, s.duplicates, s.computed) == (1, 1, 1)
