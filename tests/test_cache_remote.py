"""Caches at URLs (fsspec): build, info, verify, training and prediction through a local mirror."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pytest
from typer.testing import CliRunner

from embrecycle import BuildConfig, ConfigError, build_cache, open_cache
from embrecycle.cache.location import Remote, is_remote, local_path
from embrecycle.cli import app
from embrecycle.run_record import read_run_record


@pytest.fixture
def url() -> str:
    """A fresh folder on fsspec's in-memory filesystem."""
    return f"memory://caches/{uuid.uuid4().hex[:8]}"


@pytest.fixture(autouse=True)
def mirrors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("EMBRECYCLE_CACHE_HOME", str(home))
    return home


def _cfg(model: str, **kw: Any) -> BuildConfig:
    return BuildConfig(model=model, layer=2, batch_size=8, **kw)


def test_locations() -> None:
    assert is_remote("s3://bucket/c") and is_remote("memory://c")
    assert not is_remote("/tmp/c") and not is_remote("file:///tmp/c") and not is_remote("c")
    assert local_path("file:///tmp/c") == Path("/tmp/c")


def test_build_at_a_url_equals_a_local_build(
    tiny_bert_dir: str, texts: list[str], url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    remote = build_cache(texts, url, _cfg(tiny_bert_dir), progress=False)
    local = build_cache(texts, tmp_path / "local", _cfg(tiny_bert_dir), progress=False)
    assert remote.computed == local.computed == len(set(texts))
    fs = fsspec.filesystem("memory")
    names = sorted(Path(p).name for p in fs.ls(url.removeprefix("memory://") + "/shards", detail=False))
    assert [n.rsplit(".", 1)[1] for n in names] == ["hidden", "index", "tokens"]  # one shard, uploaded whole
    # a reader elsewhere (a fresh mirror) sees the same documents; shard data is fetched on first read
    monkeypatch.setenv("EMBRECYCLE_CACHE_HOME", str(tmp_path / "elsewhere"))
    cache = open_cache(url)
    assert cache.location == url and cache.root != tmp_path / "local"
    assert not list(cache.root.glob("shards/*.hidden"))
    ref = open_cache(tmp_path / "local")
    assert len(cache) == len(ref) and cache.manifest["settings"] == ref.manifest["settings"]
    assert cache.stats()["bytes"] == ref.stats()["bytes"]
    for text in texts[:5]:
        a, b = cache.get(text), ref.get(text)
        np.testing.assert_array_equal(a.hidden, b.hidden)
        np.testing.assert_array_equal(a.input_ids, b.input_ids)
    assert list(cache.root.glob("shards/*.hidden"))
    # building again reuses everything; more documents add a shard and reach the URL
    again = build_cache([*texts, "one more document"], url, _cfg(tiny_bert_dir), progress=False)
    assert again.reused == len(set(texts)) and again.computed == 1
    assert len(open_cache(url)) == len(set(texts)) + 1


def test_two_machines_write_apart(
    tiny_bert_dir: str, texts: list[str], url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    half = len(texts) // 2
    for name, docs in (("a", texts[:half]), ("b", texts[half:])):
        monkeypatch.setenv("EMBRECYCLE_CACHE_HOME", str(tmp_path / name))
        build_cache(docs, url, _cfg(tiny_bert_dir), progress=False)
    monkeypatch.setenv("EMBRECYCLE_CACHE_HOME", str(tmp_path / "reader"))
    cache = open_cache(url)
    assert len(cache.shards) == 2 and len(cache) == len(set(texts))
    assert cache.manifest["stats"]["documents"] == len(set(texts))


def test_verify_finds_damage_at_the_url(
    tiny_bert_dir: str, texts: list[str], url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    build_cache(texts, url, _cfg(tiny_bert_dir), progress=False)
    assert open_cache(url).verify().ok
    fs = fsspec.filesystem("memory")
    hidden = next(p for p in fs.ls(url.removeprefix("memory://") + "/shards", detail=False) if p.endswith(".hidden"))
    data = bytearray(fs.cat_file(hidden))
    data[100] ^= 0xFF
    fs.pipe_file(hidden, bytes(data))
    monkeypatch.setenv("EMBRECYCLE_CACHE_HOME", str(tmp_path / "fresh"))
    report = open_cache(url).verify(repair=True)
    assert not report.ok and report.repaired_entries == 1
    # the repaired index is uploaded: the next build recomputes the dropped document only
    monkeypatch.setenv("EMBRECYCLE_CACHE_HOME", str(tmp_path / "fresh2"))
    assert build_cache(texts, url, _cfg(tiny_bert_dir), progress=False).computed == 1
    assert open_cache(url).verify().ok


def test_missing_url_and_unknown_scheme(url: str) -> None:
    with pytest.raises(FileNotFoundError, match="no cache at memory://"):
        open_cache(url)
    with pytest.raises(ConfigError, match="Install the fsspec backend"):
        Remote("nosuchscheme://bucket/cache")


def test_cli_build_info_verify_train_predict_on_a_url(
    tiny_bert_dir: str, toy_classification: dict[str, Path], url: str, tmp_path: Path
) -> None:
    runner = CliRunner()
    data = toy_classification["train"]
    args = ["cache", "build", "--model", tiny_bert_dir, "--layer", "2", "--data", str(data), "--out", url, "-q"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["cache", "info", url, "--json"])
    assert r.exit_code == 0, r.output
    docs = json.loads(r.output)["stats"]["documents"]
    assert docs > 0
    r = runner.invoke(app, ["cache", "verify", url])
    assert r.exit_code == 0 and f"{docs} documents verified" in r.output
    run = tmp_path / "run"
    args = ["train", "--task", "classification", "--model", tiny_bert_dir, "--layer", "2", "--train", str(data)]
    args += ["--dev", str(toy_classification["dev"]), "--out", str(run), "--cache", url, "--epochs", "1"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert read_run_record(run).cache == url
    texts = [json.loads(line)["text"] for line in data.read_text().splitlines()][:6]
    from embrecycle import load

    result = load(run).predict(texts)
    assert result.hits == len(texts)  # looked up in the cache at the URL
