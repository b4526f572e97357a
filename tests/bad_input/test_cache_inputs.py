"""Bad input to the cache: shard names, empty input, damaged indexes, lost manifests, read-only caches."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from embrecycle import BuildConfig, BuildSummary, CacheCorruptedError, CacheMismatchError, build_cache, open_cache
from embrecycle.cache.format import HEADER_SIZE, RECORD_SIZE
from embrecycle.cache.shard import shard_paths
from embrecycle.cli import app
from embrecycle.errors import ConfigError, InputDataError

runner = CliRunner()
SHARD = "local-00000"


def _build(model: str, docs: list[str], out: Path, **kw: Any) -> BuildSummary:
    return build_cache(docs, out, BuildConfig(model=model, layer=2, batch_size=4, **kw), progress=False)


def _data(tmp_path: Path, texts: list[str]) -> Path:
    p = tmp_path / "docs.jsonl"
    p.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return p


def _cli_build(model: str, data: Path, out: Path, *extra: str) -> Any:
    args = ["cache", "build", "--model", model, "--layer", "2", "--data", str(data), "--out", str(out), "-q"]
    return runner.invoke(app, [*args, *extra])


def _flip(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0xFF
    path.write_bytes(bytes(raw))


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


# ---- item 2: shard names -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "../x", ".hidden", "a b", "x" * 129])
def test_bad_shard_names_are_config_errors(tiny_bert_dir: str, name: str) -> None:
    with pytest.raises(ConfigError, match="shard=") as err:
        BuildConfig(model=tiny_bert_dir, layer=2, shard=name)
    assert repr(name) in str(err.value) and "--shard worker-1" in str(err.value)


@pytest.mark.parametrize("name", ["", "../x", "a/b"])
def test_cli_bad_shard_exits_2_and_writes_nothing(tiny_bert_dir: str, texts: list[str], tmp_path: Path, name: str):
    out = tmp_path / "c"
    r = _cli_build(tiny_bert_dir, _data(tmp_path, texts[:3]), out, "--shard", name)
    assert r.exit_code == 2, r.output
    assert "shard=" in r.output and "Traceback" not in r.output
    assert not out.exists() and not (tmp_path / "x.index").exists()


@pytest.mark.parametrize("name", ["worker-1", "w_2.gpu0", "A9"])
def test_good_shard_names_build(tiny_bert_dir: str, texts: list[str], tmp_path: Path, name: str) -> None:
    _build(tiny_bert_dir, texts[:3], tmp_path / "c", shard=name)
    assert open_cache(tmp_path / "c").shards == [name]


# ---- item 8: empty input, umask, read-only caches, cache info -------------------------------------------------


@pytest.mark.parametrize("content", ["", json.dumps({"text": ""}) + "\n" + json.dumps({"text": "  "}) + "\n"])
def test_empty_input_is_an_error_before_anything_is_created(tiny_bert_dir: str, tmp_path: Path, content: str):
    data, out = tmp_path / "docs.jsonl", tmp_path / "c"
    data.write_text(content)
    r = _cli_build(tiny_bert_dir, data, out)
    assert r.exit_code == 2, r.output
    assert f"no documents in {data}" in r.output and not out.exists()


@pytest.mark.parametrize("docs", [[], ["", "  "], [[], [" "]]])
def test_empty_input_to_the_python_api_is_an_error_before_anything_is_created(
    tiny_bert_dir: str, tmp_path: Path, docs: list[Any]
) -> None:
    with pytest.raises(InputDataError, match=rf"no documents to cache: {len(docs)} given, none with any text"):
        build_cache(docs, tmp_path / "cache", BuildConfig(model=tiny_bert_dir, layer=2))
    assert not (tmp_path / "cache").exists()


def test_manifest_follows_the_umask(tiny_bert_dir: str, texts: list[str], tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        _build(tiny_bert_dir, texts[:3], tmp_path / "c")
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "c").rglob("*") if p.is_file()}
    assert modes["manifest.json"] == 0o644 and modes["settings.json"] == 0o644
    assert modes[f"{SHARD}.index"] == 0o644


def test_fully_cached_build_writes_nothing_and_takes_no_lock(
    tiny_bert_dir: str, texts: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "c"
    _build(tiny_bert_dir, texts[:10], out)
    before = _snapshot(out)

    def read_only(*_: object, **__: object) -> None:
        raise PermissionError("read-only cache")

    monkeypatch.setattr("embrecycle.cache.shard.ShardWriter.__init__", read_only)
    monkeypatch.setattr("embrecycle.cache.store.atomic_write_json", read_only)
    monkeypatch.setattr("embrecycle.cache.store.fcntl.flock", read_only)
    summary = _build(tiny_bert_dir, texts[:10], out)  # what training does with an already built cache
    assert summary.computed == 0 and summary.reused == len(set(texts[:10]))
    assert summary.opened is not None and all(i is not None for i in summary.indices())
    assert _snapshot(out) == before


def test_info_on_a_truncated_shard_exits_1_naming_it(tiny_bert_dir: str, texts: list[str], tmp_path: Path) -> None:
    out = tmp_path / "c"
    _build(tiny_bert_dir, texts[:10], out)
    hidden = shard_paths(out, SHARD)["hidden"]
    os.truncate(hidden, hidden.stat().st_size // 2)
    r = runner.invoke(app, ["cache", "info", str(out)])
    assert r.exit_code == 1 and str(hidden) in r.output and "verify --repair" in r.output
    assert runner.invoke(app, ["cache", "info", str(out), "--json"]).exit_code == 1
    assert runner.invoke(app, ["cache", "verify", str(out), "--repair"]).exit_code == 1
    assert runner.invoke(app, ["cache", "info", str(out)]).exit_code == 0


# ---- item 3: one damaged index record ---------------------------------------------------------------------


def test_damaged_middle_record_keeps_the_cache_usable(tiny_bert_dir: str, texts: list[str], tmp_path: Path):
    out, docs = tmp_path / "c", texts[:10]
    _build(tiny_bert_dir, docs, out, dtype="float32")
    reference = {d: open_cache(out).get(d).hidden for d in docs}
    index = shard_paths(out, SHARD)["index"]
    records = (index.stat().st_size - HEADER_SIZE) // RECORD_SIZE
    _flip(index, HEADER_SIZE + 4 * RECORD_SIZE + 40)  # record 4's checksummed fields

    cache = open_cache(out)  # opens: the damaged record is left out and named
    assert len(cache) == records - 1 and any(f"{index}: index record 4" in d for d in cache.damage)
    lost = next(d for d in docs if d not in cache)
    with pytest.raises(CacheCorruptedError) as err:
        cache.get(lost)
    assert str(index) in str(err.value) and f"verify --repair {out}" in str(err.value)
    assert all(np.array_equal(cache.get(d).hidden, reference[d]) for d in docs if d != lost)

    with pytest.raises(CacheCorruptedError, match=rf"index record 4 .*verify --repair {out}"):
        _build(tiny_bert_dir, docs, out, dtype="float32")  # the writer refuses to extend a damaged shard
    info = runner.invoke(app, ["cache", "info", str(out)])
    assert info.exit_code == 1 and str(index) in info.output
    r = runner.invoke(app, ["cache", "verify", str(out)])
    assert r.exit_code == 1 and "index record 4" in r.output
    r = runner.invoke(app, ["cache", "verify", str(out), "--repair"])
    assert r.exit_code == 1 and "dropped 1 damaged entries" in r.output, r.output
    assert runner.invoke(app, ["cache", "verify", str(out)]).exit_code == 0

    again = _build(tiny_bert_dir, docs, out, dtype="float32")
    assert again.computed == 1  # only the dropped document (in a batch of its own: equal up to padding effects)
    assert all(np.array_equal(open_cache(out).get(d).hidden, reference[d]) for d in docs if d != lost)
    np.testing.assert_allclose(open_cache(out).get(lost).hidden, reference[lost], atol=1e-5)


def test_damaged_header_is_rebuilt_by_repair(tiny_bert_dir: str, texts: list[str], tmp_path: Path) -> None:
    out = tmp_path / "c"
    _build(tiny_bert_dir, texts[:10], out)
    index = shard_paths(out, SHARD)["index"]
    _flip(index, 2)  # the magic
    cache = open_cache(out)
    assert len(cache) == 0 and str(index) in cache.damage[0]
    with pytest.raises(CacheCorruptedError, match="verify --repair"):
        cache.get(texts[0])
    report = cache.verify(repair=True)
    assert not report.ok and report.repaired_entries == 0
    assert len(open_cache(out)) == len(set(texts[:10])) and open_cache(out).verify().ok


def test_lost_index_records_are_noticed(tiny_bert_dir: str, texts: list[str], tmp_path: Path) -> None:
    out = tmp_path / "c"
    _build(tiny_bert_dir, texts[:10], out)
    index = shard_paths(out, SHARD)["index"]
    os.truncate(index, HEADER_SIZE + 3 * RECORD_SIZE)  # whole records gone: no torn tail to notice
    cache = open_cache(out)
    assert len(cache) == 3 and "counted" in cache.damage[0] and str(index) in cache.damage[0]
    assert cache.verify(repair=True).problems
    assert not open_cache(out).damage
    assert _build(tiny_bert_dir, texts[:10], out).computed == len(set(texts[:10])) - 3


# ---- item 8: a lost manifest ----------------------------------------------------------------------------------


def test_lost_manifest_is_restored_by_verify_repair(tiny_bert_dir: str, texts: list[str], tmp_path: Path) -> None:
    out = tmp_path / "c"
    _build(tiny_bert_dir, texts[:10], out)
    (out / "manifest.json").unlink()
    r = runner.invoke(app, ["cache", "verify", str(out)])
    assert r.exit_code == 2 and f"verify --repair {out}" in r.output and "build one" not in r.output
    r = runner.invoke(app, ["cache", "verify", str(out), "--repair"])
    assert r.exit_code == 1 and "restored" in r.output
    assert runner.invoke(app, ["cache", "verify", str(out)]).exit_code == 0
    assert len(open_cache(out)) == len(set(texts[:10]))


@pytest.mark.parametrize("copy", [True, False])
def test_lost_manifest_is_restored_by_the_same_build(tiny_bert_dir: str, texts: list[str], tmp_path: Path, copy: bool):
    out = tmp_path / "c"
    _build(tiny_bert_dir, texts[:10], out)
    (out / "manifest.json").unlink()
    if not copy:
        (out / "shards" / "settings.json").unlink()
        r = runner.invoke(app, ["cache", "verify", str(out)])
        assert r.exit_code == 2 and "re-run the `embrecycle cache build" in r.output
    summary = _build(tiny_bert_dir, texts[:12], out)
    assert summary.reused == len(set(texts[:10])) and summary.computed == len(set(texts[:12])) - len(set(texts[:10]))
    assert open_cache(out).verify().ok


def test_lost_manifest_is_not_restored_with_other_settings(tiny_bert_dir: str, texts: list[str], tmp_path: Path):
    out = tmp_path / "c"
    _build(tiny_bert_dir, texts[:10], out)
    (out / "manifest.json").unlink()
    with pytest.raises(CacheMismatchError, match="layer"):
        build_cache(texts[:10], out, BuildConfig(model=tiny_bert_dir, layer=3), progress=False)
    (out / "shards" / "settings.json").unlink()
    with pytest.raises(CacheCorruptedError, match=r"manifest\.json is missing"):
        build_cache(texts[:10], out, BuildConfig(model=tiny_bert_dir, layer=3), progress=False)
    assert not (out / "manifest.json").exists()


@pytest.mark.parametrize("damage", ["{not json", '{"format": "embrecycle-cache"}'])
def test_damaged_manifest_is_restored_by_verify_repair(tiny_bert_dir: str, texts: list[str], tmp_path: Path, damage):
    out = tmp_path / "c"
    _build(tiny_bert_dir, texts[:10], out)
    (out / "manifest.json").write_text(damage)
    r = runner.invoke(app, ["cache", "info", str(out)])
    assert r.exit_code == 2 and "manifest.json" in r.output and f"verify --repair {out}" in r.output
    r = runner.invoke(app, ["cache", "verify", str(out), "--repair"])
    assert r.exit_code == 1 and "was damaged" in r.output and (out / "manifest.json.damaged").exists()
    assert runner.invoke(app, ["cache", "verify", str(out)]).exit_code == 0
    info = json.loads(runner.invoke(app, ["cache", "info", str(out), "--json"]).stdout)
    assert info["stats"]["documents"] == len(set(texts[:10])) == len(open_cache(out))
