"""The Ray engine: a distributed build equals the local one, survives a killed worker and a crashed driver.

These tests start a local Ray cluster (2 CPUs) and are marked ``ray`` (``make test-ray``); the
missing-Ray message is checked in the default suite.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from embrecycle import BuildConfig, MissingDependencyError, build_cache, load, open_cache
from embrecycle.cache import RayOptions, build_cache_ray
from embrecycle.cache.ray_engine import LowerLayersActor
from shared_data import require_shared_data


def test_missing_ray_names_the_extra(monkeypatch: pytest.MonkeyPatch, tiny_bert_dir: str, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(MissingDependencyError, match=r"pip install 'embrecycle\[ray\]'"):
        build_cache_ray(["a text"], tmp_path / "c", BuildConfig(model=tiny_bert_dir, layer=2))


def test_ray_options_are_checked() -> None:
    with pytest.raises(ValueError, match="num_workers=0"):
        RayOptions(num_workers=0)
    with pytest.raises(ValueError, match="gpus_per_worker=-1"):
        RayOptions(gpus_per_worker=-1)


def _corpus() -> list[str]:
    """Real documents: 150 sci-cite sentences from ../shared/data, and 10 of them again (stored once)."""
    lines = (require_shared_data() / "sci-cite" / "train.jsonl").read_text(encoding="utf-8").splitlines()[:150]
    docs = [json.loads(line)["text"] for line in lines]
    return docs + docs[:10]


def _same_entries(a_path: str | Path, b_path: str | Path) -> float:
    """Assert two caches hold the same documents and tokens; the largest state difference."""
    a, b = open_cache(a_path), open_cache(b_path)
    assert sorted(a.keys.tolist()) == sorted(b.keys.tolist())
    assert a.manifest["settings"] == b.manifest["settings"]
    assert a.stats()["tokens"] == b.stats()["tokens"] and a.stats()["documents"] == b.stats()["documents"]
    worst = 0.0
    for key in a.keys.tolist():
        i, j = a.index_of(key), b.index_of(key)
        assert i is not None and j is not None
        x, y = a.read(i), b.read(j)
        np.testing.assert_array_equal(x.input_ids, y.input_ids)
        np.testing.assert_array_equal(x.offsets, y.offsets)
        worst = max(worst, float(np.abs(x.hidden - y.hidden).max()))
    return worst


@pytest.mark.ray
def test_ray_build_equals_the_local_build(cluster: ModuleType, tiny_bert_dir: str, tmp_path: Path) -> None:
    docs = _corpus()
    cfg = BuildConfig(model=tiny_bert_dir, layer=2, batch_size=8)
    local = build_cache(docs, tmp_path / "local", cfg, progress=False)
    summary = build_cache_ray(
        docs, tmp_path / "ray", cfg, RayOptions(num_workers=2, batches_per_shard=3), progress=False
    )
    assert summary.computed == local.computed == len(set(docs)) and summary.duplicates == local.duplicates == 10
    assert _same_entries(tmp_path / "local", tmp_path / "ray") <= 2e-3  # float16 storage: at most an ulp apart
    cache = open_cache(tmp_path / "ray")
    assert len(cache.shards) == -(-len(set(docs)) // 24) and cache.manifest["stats"]["documents"] == len(set(docs))
    assert not list((tmp_path / "ray").glob("shards/*.plan.npz")) and cache.verify().ok
    # a second build finds everything
    again = build_cache_ray(docs, tmp_path / "ray", cfg, RayOptions(num_workers=1), progress=False)
    assert again.computed == 0 and again.reused == len(set(docs))


@pytest.mark.ray
def test_a_killed_worker_still_yields_a_complete_cache(cluster: ModuleType, tiny_bert_dir: str, tmp_path: Path) -> None:
    from ray_actors import DiesOnce

    docs = _corpus()
    cfg = BuildConfig(model=tiny_bert_dir, layer=2, batch_size=8)
    summary = build_cache_ray(
        docs,
        tmp_path / "ray",
        cfg,
        RayOptions(num_workers=2, batches_per_shard=2),
        progress=False,
        actor_class=DiesOnce,
    )
    assert (tmp_path / "died").exists()  # a worker process really exited mid-chunk
    assert summary.computed == len(set(docs))
    build_cache(docs, tmp_path / "local", cfg, progress=False)
    _same_entries(tmp_path / "local", tmp_path / "ray")
    assert open_cache(tmp_path / "ray").verify().ok


@pytest.mark.ray
def test_rerun_after_a_failed_build_computes_only_what_is_missing(
    cluster: ModuleType, tiny_bert_dir: str, tmp_path: Path
) -> None:
    from ray_actors import FailsOnChunk

    docs = _corpus()
    cfg = BuildConfig(model=tiny_bert_dir, layer=2, batch_size=8)
    (tmp_path / "refuse.txt").write_text(max(docs, key=len), encoding="utf-8")  # in the last chunk planned
    opts = RayOptions(num_workers=2, batches_per_shard=2)
    with pytest.raises(Exception, match="chunk refused"):
        build_cache_ray(docs, tmp_path / "ray", cfg, opts, progress=False, actor_class=FailsOnChunk)
    done = len(open_cache(tmp_path / "ray"))
    assert 0 < done < len(set(docs)) and (tmp_path / "ray" / "shards" / "ray-driver.plan.npz").exists()
    summary = build_cache_ray(
        docs, tmp_path / "ray", cfg, RayOptions(num_workers=2, batches_per_shard=2), progress=False
    )
    assert summary.reused == done and summary.computed == len(set(docs)) - done
    build_cache(docs, tmp_path / "local", cfg, progress=False)
    _same_entries(tmp_path / "local", tmp_path / "ray")


@pytest.mark.ray
def test_ray_build_at_a_url_trains_and_predicts(
    cluster: ModuleType,
    tiny_bert_dir: str,
    toy_classification: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EMBRECYCLE_CACHE_HOME", str(tmp_path / "mirrors"))
    url = f"local://{tmp_path}/bucket/cache"  # through fsspec and a local mirror, like s3://
    rows = [json.loads(line) for line in toy_classification["train"].read_text().splitlines()]
    cfg = BuildConfig(model=tiny_bert_dir, layer=2, batch_size=8)
    summary = build_cache_ray([r["text"] for r in rows], url, cfg, RayOptions(num_workers=2), progress=False)
    assert summary.computed == len({r["text"] for r in rows})
    assert (tmp_path / "bucket" / "cache" / "manifest.json").exists()
    from embrecycle.training import TrainConfig, train

    run = tmp_path / "run"
    result = train(
        TrainConfig(
            task="classification",
            model=tiny_bert_dir,
            layer=2,
            train=str(toy_classification["train"]),
            dev=str(toy_classification["dev"]),
            out=str(run),
            cache=url,
            epochs=1,
        ),
        progress=False,
    )
    assert result.cache == url
    texts = [r["text"] for r in rows[:8]]
    assert load(run).predict(texts).hits == len(texts)


def test_actor_publishes_a_chunk_in_process(tiny_bert_dir: str, texts: list[str], tmp_path: Path) -> None:
    """The actor's work without Ray: a chunk becomes one readable shard equal to a local build's states."""
    from embrecycle.cache import Cache
    from embrecycle.cache.builder import cache_settings_for
    from embrecycle.cache.ray_engine import chunk_name
    from embrecycle.encoder import load_encoder

    cfg = BuildConfig(model=tiny_bert_dir, layer=2, dtype="float32")
    settings = cache_settings_for(load_encoder(tiny_bert_dir, 2), cfg, "fp32")
    cache = Cache.create(tmp_path / "c", settings)
    docs = list(dict.fromkeys(texts))[:6]
    batches = [[cache.key(d) for d in docs[:3]], [cache.key(d) for d in docs[3:]]]
    payload = json.dumps(
        [[[k.hex(), d, True] for k, d in zip(b, docs[i * 3 :], strict=False)] for i, b in enumerate(batches)]
    )
    actor = LowerLayersActor({"model": tiny_bert_dir, "layer": 2, "revision": None, "attn_implementation": None,
                              "fsync": False}, settings.to_dict(), str(tmp_path / "c"))  # fmt: skip
    out = actor.process(chunk_name(batches), payload)
    assert out["computed"] == out["documents"] == 6 and out["bytes"] > 0
    assert not list((tmp_path / "c" / ".staging").iterdir())  # staging cleaned up
    cache.refresh()
    build_cache(docs, tmp_path / "local", cfg, progress=False)
    ref = open_cache(tmp_path / "local")
    for d in docs:
        np.testing.assert_allclose(cache.get(d).hidden, ref.get(d).hidden, atol=1e-5)


def test_actor_refuses_other_weights(tiny_bert_dir: str, other_bert_dir: str, tmp_path: Path) -> None:
    """A worker whose model differs from the driver's (another revision on that node) fails loudly."""
    from embrecycle.cache.builder import cache_settings_for
    from embrecycle.encoder import load_encoder

    cfg = BuildConfig(model=tiny_bert_dir, layer=2)
    settings = cache_settings_for(load_encoder(tiny_bert_dir, 2), cfg, "fp32")
    other = {"model": other_bert_dir, "layer": 2, "revision": None, "attn_implementation": None, "fsync": False}
    with pytest.raises(ValueError, match="install the same model"):
        LowerLayersActor(other, settings.to_dict(), str(tmp_path / "c"))


def test_cli_engine_ray_without_ray_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, tiny_bert_dir: str, toy_classification: dict[str, Path], tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from embrecycle.cli import app

    monkeypatch.setitem(sys.modules, "ray", None)
    base = ["cache", "build", "--model", tiny_bert_dir, "--layer", "2", "--data", str(toy_classification["train"])]
    r = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "c"), "--engine", "ray", "-q"])
    assert r.exit_code == 2 and "embrecycle[ray]" in r.output
    r = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "c"), "--engine", "spark", "-q"])
    assert r.exit_code == 2 and "--engine 'spark'" in r.output
