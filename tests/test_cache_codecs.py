"""Storage dtypes: every codec's round trip within its stated error bound, and quantised caches end to end."""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from embrecycle import BuildConfig, CacheMismatchError, ConfigError, build_cache, open_cache
from embrecycle.cache.codecs import ALIASES, CODECS, canonical_dtype
from embrecycle.cache.format import QUANTISED_FORMAT_VERSION
from embrecycle.cache.shard import shard_paths
from embrecycle.errors import UnstorableStatesError


def _states(seed: int = 0, shape: tuple[int, ...] = (3, 7, 128)) -> torch.Tensor:
    """Residual-stream-like states: unit scale, with two outlier channels 50x larger."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g)
    x[..., 5] *= 50
    x[..., 77] *= -30
    return x


@pytest.mark.parametrize("name", sorted(CODECS))
def test_every_dtype_round_trips_within_its_bound(name: str) -> None:
    codec, x = CODECS[name], _states()
    stored = codec.encode(x)
    assert stored.shape == (3, 7, codec.width(128)) and stored.dtype == codec.item_dtype
    assert stored.nbytes == 3 * 7 * codec.row_bytes(128)
    back = codec.decode(stored, 128).float()
    assert back.shape == x.shape
    assert bool(((back - x).abs() <= codec.error_bound(x)).all())
    zeros = codec.decode(np.zeros((2, codec.width(128)), codec.item_dtype), 128)
    assert float(zeros.abs().max()) == 0  # padding rows read as zeros


def test_the_bounds_are_what_the_module_states() -> None:
    x = _states()
    int8, int4 = CODECS["int8-g64"], CODECS["int4-g32"]
    group_max = x.reshape(3, 7, 2, 64).abs().amax(-1, keepdim=True).expand(3, 7, 2, 64).reshape(x.shape)
    assert torch.allclose(int8.error_bound(x), group_max / 127 * (0.5 + 127 / 1024) + 1e-6)
    # a group without outliers is quantised finely: its error is far below an outlier group's
    one = _states(1)
    one[..., 77] /= -30  # only channel 5 is an outlier now
    err = (int8.decode(int8.encode(one), 128).float() - one).abs()
    assert err[..., 64:].max() < err[..., :64].max() / 5
    assert (int4.decode(int4.encode(x), 128).float() - x).abs().max() <= int4.error_bound(x).max()
    # one scale per token spends its 255 levels on the outliers: the other channels lose far more
    per_token = CODECS["int8-token"]
    token_err = (per_token.decode(per_token.encode(one), 128).float() - one).abs()
    assert token_err[..., 64:].mean() > err[..., 64:].mean() * 5


def test_row_sizes() -> None:
    assert [CODECS[n].row_bytes(384) for n in ("float32", "float16", "int8-token", "int8-g64", "int4-g64")] == [
        1536,
        768,
        386,
        396,
        204,
    ]
    assert canonical_dtype("int8") == ALIASES["int8"] and canonical_dtype("float16") == "float16"


def _build(model: str, texts: list[str], out: Path, dtype: str) -> None:
    build_cache(texts, out, BuildConfig(model=model, layer=2, batch_size=8, dtype=dtype), progress=False)


@pytest.mark.parametrize("dtype", ["int8-token", "int8", "int4"])
def test_a_quantised_cache_reads_like_any_cache(wide_bert_dir: str, texts: list[str], tmp_path: Path, dtype: str):
    _build(wide_bert_dir, texts[:20], tmp_path / "f", "float32")
    _build(wide_bert_dir, texts[:20], tmp_path / "q", dtype)
    f, q = open_cache(tmp_path / "f"), open_cache(tmp_path / "q")
    codec = CODECS[canonical_dtype(dtype)]
    manifest = json.loads((tmp_path / "q" / "manifest.json").read_text())
    assert manifest["settings"]["dtype"] == codec.name and manifest["format_version"] == QUANTISED_FORMAT_VERSION
    for t in texts[:20]:
        exact = torch.from_numpy(f.get(t).hidden)
        got = torch.from_numpy(q.get(t).hidden)
        assert bool(((got - exact).abs() <= codec.error_bound(exact)).all())
    batch = q.read_batch([0, 3, 5])
    assert batch.hidden.shape[-1] == 128 and batch.hidden.dtype == torch.float32
    assert torch.equal(batch.hidden[1, : q.lengths[3]], torch.from_numpy(q.read(3).hidden))
    assert q.stats()["bytes"] < f.stats()["bytes"] / (3.5 if codec.quantised else 1)
    assert q.verify().ok
    # the alias and the full name are one cache: a rebuild finds every document
    again = build_cache(texts[:20], tmp_path / "q", BuildConfig(model=wide_bert_dir, layer=2, dtype=codec.name))
    assert again.computed == 0
    with pytest.raises(CacheMismatchError, match="dtype"):
        build_cache(texts[:20], tmp_path / "q", BuildConfig(model=wide_bert_dir, layer=2, dtype="float16"))


def test_a_corrupted_scale_is_caught(wide_bert_dir: str, texts: list[str], tmp_path: Path) -> None:
    out = tmp_path / "q"
    _build(wide_bert_dir, texts[:10], out, "int8-g64")
    codec = CODECS["int8-g64"]
    hidden = shard_paths(out, "local-00000")["hidden"]
    data = bytearray(hidden.read_bytes())
    data[128 + 1] ^= 0x40  # the first row's first scale (after its 128 code bytes)
    hidden.write_bytes(bytes(data))
    report = open_cache(out).verify()
    assert not report.ok and "checksum" in report.problems[0]
    assert codec.width(128) == 128 + 2 * 2


def test_a_group_must_divide_the_hidden_size(tiny_bert_dir: str, texts: list[str], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a multiple of 64; choose int8-token or int4-g32 or a float dtype"):
        _build(tiny_bert_dir, texts[:4], tmp_path / "q", "int8-g64")  # 32 channels
    _build(tiny_bert_dir, texts[:4], tmp_path / "t", "int8-token")  # one scale per token fits any width
    assert len(open_cache(tmp_path / "t")) == 4


def test_a_converted_cache_equals_one_built_in_its_dtype(wide_bert_dir: str, texts: list[str], tmp_path: Path) -> None:
    from embrecycle import convert_cache

    _build(wide_bert_dir, texts[:30], tmp_path / "f32", "float32")
    _build(wide_bert_dir, texts[:30], tmp_path / "direct", "int8")
    summary = convert_cache(tmp_path / "f32", tmp_path / "conv", "int8", progress=False)
    assert (summary.converted, summary.already_there, summary.dtype) == (len(set(texts[:30])), 0, "int8-g64")
    assert summary.bytes < summary.source_bytes * 0.3  # codes + scales + tokens vs float32
    direct, conv = open_cache(tmp_path / "direct"), open_cache(tmp_path / "conv")
    assert len(conv) == len(direct) and conv.verify().ok
    for t in texts[:30]:
        a, b = direct.get(t), conv.get(t)
        assert np.array_equal(a.hidden, b.hidden) and np.array_equal(a.input_ids, b.input_ids)
    manifest = json.loads((tmp_path / "conv" / "manifest.json").read_text())
    assert manifest["converted_from"]["dtype"] == "float32" and manifest["settings"]["dtype"] == "int8-g64"
    # it grows like any cache: a build adds only the new documents, keyed as the converted ones
    more = build_cache(texts, tmp_path / "conv", BuildConfig(model=wide_bert_dir, layer=2, dtype="int8"))
    assert more.reused == len(set(texts[:30])) and more.computed == len(set(texts)) - len(set(texts[:30]))
    # and converts onwards (to 4 bits) from there
    four = convert_cache(tmp_path / "conv", tmp_path / "four", "int4", progress=False)
    assert four.converted == len(set(texts)) and open_cache(tmp_path / "four").get(texts[0]).hidden.shape[1] == 128


def test_an_interrupted_conversion_resumes(
    wide_bert_dir: str,
    texts: list[str],
    tmp_path: Path,
    nth_append_interrupted: Callable[[int], AbstractContextManager[None]],
) -> None:
    from embrecycle import convert_cache

    _build(wide_bert_dir, texts, tmp_path / "src", "float16")
    with nth_append_interrupted(2):
        convert_cache(tmp_path / "src", tmp_path / "dst", "int8-token", progress=False, batch_documents=8)
    assert len(open_cache(tmp_path / "dst")) == 8
    again = convert_cache(tmp_path / "src", tmp_path / "dst", "int8-token", progress=False, batch_documents=8)
    assert again.already_there == 8 and again.converted == len(set(texts)) - 8
    assert len(open_cache(tmp_path / "dst")) == len(set(texts))


def test_conversion_refuses_what_it_cannot_do(wide_bert_dir: str, texts: list[str], tmp_path: Path) -> None:
    from embrecycle import convert_cache

    _build(wide_bert_dir, texts[:5], tmp_path / "src", "float16")
    with pytest.raises(ConfigError, match="is the source cache"):
        convert_cache(tmp_path / "src", tmp_path / "src", "int8", progress=False)
    with pytest.raises(ConfigError, match="dtype='int3'"):
        convert_cache(tmp_path / "src", tmp_path / "x", "int3", progress=False)
    _build(wide_bert_dir, texts[:5], tmp_path / "other", "int8-token")
    with pytest.raises(CacheMismatchError, match="holds another cache"):
        convert_cache(tmp_path / "src", tmp_path / "other", "int8", progress=False)
    convert_cache(tmp_path / "src", tmp_path / "eight", "int8", progress=False)
    with pytest.raises(CacheMismatchError, match=r"holds a conversion of this source to int8-g64 .* --dtype int8-g64"):
        convert_cache(tmp_path / "src", tmp_path / "eight", "int4", progress=False)
    made_from = json.loads((tmp_path / "eight" / "manifest.json").read_text())["converted_from"]["location"]
    assert made_from == str((tmp_path / "src").resolve())


def test_a_run_trained_on_8_bit_states_predicts_from_any_dtype(
    tiny_bert_dir: str, toy_classification: dict[str, Path], tmp_path: Path
) -> None:
    """Explicitly allowed: the storage dtype is how states are kept, not which states; a run reads any of them."""
    import embrecycle
    from embrecycle.data import read_examples
    from embrecycle.training import TrainConfig, train

    cfg = TrainConfig(task="classification", model=tiny_bert_dir, layer=2, train=str(toy_classification["train"]),
                      dev=str(toy_classification["dev"]), out=str(tmp_path / "run"), cache=str(tmp_path / "q"),
                      cache_dtype="int8-token", epochs=1)  # fmt: skip
    result = train(cfg, progress=False)
    assert json.loads((tmp_path / "q" / "manifest.json").read_text())["settings"]["dtype"] == "int8-token"
    docs = [e.doc for e in read_examples(toy_classification["dev"])]
    build_cache(docs, tmp_path / "f16", BuildConfig(model=tiny_bert_dir, layer=2, dtype="float16"), progress=False)
    model = embrecycle.load(result.run_dir)
    on_own, on_f16 = model.predict(docs), model.predict(docs, cache=tmp_path / "f16")
    assert on_own.hits == on_f16.hits == len(docs)
    agree = sum(a["label"] == b["label"] for a, b in zip(on_own.items, on_f16.items, strict=True))
    assert agree >= 0.9 * len(docs)  # the same states within int8's rounding


def test_a_cache_converted_by_the_cli_trains_and_predicts(
    tiny_bert_dir: str, toy_classification: dict[str, Path], tmp_path: Path
) -> None:
    """`cache convert` (the command), then a run trained on the converted cache and predicting from it."""
    from typer.testing import CliRunner

    import embrecycle
    from embrecycle.cli import app
    from embrecycle.data import read_examples
    from embrecycle.training import TrainConfig, train

    docs = [e.doc for f in ("train", "dev") for e in read_examples(toy_classification[f])]
    build_cache(docs, tmp_path / "f16", BuildConfig(model=tiny_bert_dir, layer=2, dtype="float16"), progress=False)
    args = ["cache", "convert", str(tmp_path / "f16"), "--dtype", "int8-token", "--out", str(tmp_path / "q")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "q" / "manifest.json").read_text())["converted_from"]["dtype"] == "float16"
    cfg = TrainConfig(task="classification", model=tiny_bert_dir, layer=2, train=str(toy_classification["train"]),
                      dev=str(toy_classification["dev"]), out=str(tmp_path / "run"), cache=str(tmp_path / "q"),
                      cache_dtype="int8-token", epochs=2, lr=1e-2)  # fmt: skip
    run = train(cfg, progress=False)
    assert len(open_cache(tmp_path / "q")) == len(set(docs))  # training added nothing: every state was there
    model = embrecycle.load(run.run_dir)
    dev = [e.doc for e in read_examples(toy_classification["dev"])]
    got = model.predict(dev, cache=tmp_path / "q")
    assert got.hits == len(dev) and got.misses == 0
    scores = model.evaluate(model.read(toy_classification["dev"]), cache=tmp_path / "q")
    saved = json.loads((Path(run.run_dir) / "metrics.json").read_text())["best"]["macro_f1"]
    assert scores["macro_f1"] == pytest.approx(saved, abs=1e-6)  # predicted from the states it was scored on


@pytest.mark.parametrize("name", [n for n in sorted(CODECS) if CODECS[n].quantised])
@pytest.mark.parametrize("scale", [1e-9, 3e-8, 4e-6, 1e-3])
def test_tiny_values_stay_within_the_bound(name: str, scale: float) -> None:
    codec, x = CODECS[name], _states(2) * scale
    back = codec.decode(codec.encode(x), 128).float()
    assert bool(((back - x).abs() <= codec.error_bound(x)).all())


def test_a_converted_cache_keeps_its_keys_when_repair_restores_its_manifest(
    wide_bert_dir: str, texts: list[str], tmp_path: Path
) -> None:
    from embrecycle import convert_cache
    from embrecycle.cache.store import restore_manifest

    _build(wide_bert_dir, texts[:10], tmp_path / "src", "float16")
    convert_cache(tmp_path / "src", tmp_path / "dst", "int8", progress=False)
    (tmp_path / "dst" / "manifest.json").unlink()
    assert restore_manifest(tmp_path / "dst")
    cache = open_cache(tmp_path / "dst")
    assert cache.manifest["converted_from"]["dtype"] == "float16" and cache.get(texts[0]).hidden.shape[1] == 128


@pytest.mark.parametrize("name", sorted(CODECS))
def test_states_a_dtype_would_corrupt_are_refused_naming_the_document(name: str) -> None:
    codec = CODECS[name]
    x = _states()
    codec.check_storable(x, ["a.jsonl:1", "a.jsonl:2", "a.jsonl:3"])  # ordinary states pass
    for bad, what in ((float("nan"), "1 NaN"), (float("inf"), "1 infinite")):
        y = x.clone()
        y[1, 3, 9] = bad
        with pytest.raises(UnstorableStatesError, match=f"document a.jsonl:2: its states hold .*{what}.*--precision"):
            codec.check_storable(y, ["a.jsonl:1", "a.jsonl:2", "a.jsonl:3"])
    huge = x.clone()
    huge[2, 0, 0] = 1e7 if codec.quantised else 1e5
    if codec.max_abs > abs(float(huge[2, 0, 0])):  # float32 and bfloat16 hold it
        codec.check_storable(huge, ["a", "b", "c"])
        back = codec.decode(codec.encode(huge), 128).float()
        assert bool(torch.isfinite(back).all())
    else:
        with pytest.raises(UnstorableStatesError, match=f"document c: .*beyond .*{name}.*float32 or bfloat16"):
            codec.check_storable(huge, ["a", "b", "c"])


def test_the_largest_storable_states_round_trip_finitely() -> None:
    """Just under each quantised dtype's limit the float16 scale is finite and the values read back."""
    for name in ("int8-g64", "int4-g32", "int8-token"):
        codec = CODECS[name]
        x = _states()
        x[0, 0, 0] = codec.max_abs * 0.999
        codec.check_storable(x, ["a", "b", "c"])
        back = codec.decode(codec.encode(x), 128).float()
        assert bool(torch.isfinite(back).all()) and bool(((back - x).abs() <= codec.error_bound(x)).all())


def _scaled_bert(wide_bert_dir: str, out: Path, gain: float) -> str:
    """``wide_bert_dir`` whose second layer's output is multiplied by ``gain`` (its LayerNorm's weight)."""
    import shutil

    from transformers import AutoModel

    model = AutoModel.from_pretrained(wide_bert_dir)
    with torch.no_grad():
        model.encoder.layer[1].output.LayerNorm.weight.mul_(gain)
    shutil.copytree(wide_bert_dir, out)
    model.save_pretrained(out)
    return str(out)


def test_a_build_refuses_states_its_dtype_cannot_hold_and_keeps_what_it_stored(
    wide_bert_dir: str, texts: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from embrecycle import convert_cache

    loud = _scaled_bert(wide_bert_dir, tmp_path / "loud", 1e6)
    with pytest.raises(UnstorableStatesError, match=r"document #\d+ of the input .*beyond the 6.55e\+04.*'float16'"):
        _build(loud, texts[:10], tmp_path / "f16", "float16")
    _build(loud, texts[:10], tmp_path / "f32", "float32")  # float32 holds them
    with pytest.raises(UnstorableStatesError, match=r"key [0-9a-f]{64} .*'int4-g32'"):
        convert_cache(tmp_path / "f32", tmp_path / "i4", "int4", progress=False)

    from embrecycle.split import SplitEncoder

    real, calls = SplitEncoder.lower, []

    def nan_from_the_second_batch(self: SplitEncoder, *args: Any, **kwargs: Any) -> torch.Tensor:
        calls.append(1)
        out = real(self, *args, **kwargs)
        return out * float("nan") if len(calls) > 1 else out

    monkeypatch.setattr(SplitEncoder, "lower", nan_from_the_second_batch)
    docs = sorted(set(texts))[:20]
    with pytest.raises(UnstorableStatesError, match=r"document in.txt:\d+: its states hold \d+ NaN"):
        build_cache(
            docs,
            tmp_path / "partial",
            BuildConfig(model=wide_bert_dir, layer=2, batch_size=8, dtype="int8"),
            sources=[f"in.txt:{i + 1}" for i in range(len(docs))],
            progress=False,
        )
    partial = open_cache(tmp_path / "partial")  # the first batch stays; a re-run computes the rest
    assert len(partial) == 8 and partial.verify().ok


def test_a_converted_float_cache_is_format_2(wide_bert_dir: str, texts: list[str], tmp_path: Path) -> None:
    """Its keys are its source's (``key_fingerprint``): a reader that ignored that would miss every document, so
    embrecycle before quantised caches (which reads version 1 only) must refuse it."""
    from embrecycle import convert_cache

    _build(wide_bert_dir, texts[:5], tmp_path / "f32", "float32")
    convert_cache(tmp_path / "f32", tmp_path / "f16", "float16", progress=False)
    built = json.loads((tmp_path / "f32" / "manifest.json").read_text())
    converted = json.loads((tmp_path / "f16" / "manifest.json").read_text())
    assert built["format_version"] == 1 and "key_fingerprint" not in built
    assert converted["format_version"] == QUANTISED_FORMAT_VERSION and converted["key_fingerprint"]
    f16, f32 = open_cache(tmp_path / "f16"), open_cache(tmp_path / "f32")
    assert f16.get(texts[0]).hidden.shape == f32.get(texts[0]).hidden.shape


FORMAT_1 = Path(__file__).parent / "fixtures" / "cache_v1"
"""Caches written by embrecycle before quantised dtypes existed (commit 2c240f6; ``tiny_bert_dir``'s model)."""


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_a_cache_from_before_quantised_dtypes_still_reads(tiny_bert_dir: str, tmp_path: Path, dtype: str) -> None:
    import shutil

    old = tmp_path / "old"
    shutil.copytree(FORMAT_1 / dtype, old)
    texts = json.loads((FORMAT_1 / "texts.json").read_text())
    manifest = json.loads((old / "manifest.json").read_text())
    assert manifest["format_version"] == 1 and manifest["settings"]["dtype"] == dtype
    cache = open_cache(old)
    assert len(cache) == len(set(texts)) and cache.verify().ok and not cache.damage
    fresh = tmp_path / "fresh"
    build_cache(texts, fresh, BuildConfig(model=tiny_bert_dir, layer=2, batch_size=4, dtype=dtype), progress=False)
    new = open_cache(fresh)
    assert new.settings.lower_fingerprint == cache.settings.lower_fingerprint  # the same weights
    # The fixture's states were computed on another CPU: float32 matmuls differ there in the last bits (AVX512
    # against AVX2 accumulation), so states are compared to within float32 rounding, float16 to one of its ulps.
    tol = {"float32": 1e-5, "float16": 2e-3}[dtype]
    for t in texts:  # the same keys, tokens and states
        a, b = cache.get(t), new.get(t)
        assert np.array_equal(a.input_ids, b.input_ids) and np.array_equal(a.offsets, b.offsets)
        np.testing.assert_allclose(a.hidden, b.hidden, rtol=tol, atol=tol)
    assert {k.tobytes() for k in cache.keys} == {k.tobytes() for k in new.keys}
