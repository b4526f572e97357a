"""Cache maintenance: merging shards, removing documents, garbage, statistics; each safe to interrupt."""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import numpy as np
import pytest
import torch

from embrecycle import BuildConfig, CacheMissError, ConfigError, build_cache, open_cache
from embrecycle.cache import maintenance
from embrecycle.cache.maintenance import cache_stats, collect_garbage, compact, remove_documents
from embrecycle.cache.shard import ShardWriter, list_shards, shard_paths


def _sharded(model: str, texts: list[str], out: Path, shards: int = 4) -> list[str]:
    """A cache written by ``shards`` workers (one shard each), plus one document stored twice."""
    docs = sorted(set(texts))
    for w in range(shards):
        config = BuildConfig(model=model, layer=2, batch_size=4, shard=f"worker-{w}")
        build_cache(docs[w::shards], out, config, progress=False)
    # a second writer that stored a document already there (as concurrent writers can)
    cache = open_cache(out)
    i = cache.index_of(cache.key(docs[0]))
    assert i is not None
    with ShardWriter(out, "worker-late", 32, cache.settings.dtype) as w:
        w.append([cache.stored_entry(i)])
    open_cache(out).update_manifest_stats()
    return docs


def _contents(out: Path, docs: list[str]) -> dict[str, np.ndarray]:
    cache = open_cache(out)
    return {d: cache.get(d).hidden for d in docs}


@pytest.mark.parametrize("group", [1000, 2])
def test_compact_merges_every_shard_into_one(
    tiny_bert_dir: str, texts: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, group: int
) -> None:
    monkeypatch.setattr(maintenance, "GROUP_SHARDS", group)  # 2: three groups, then their shards merged
    out = tmp_path / "c"
    docs = _sharded(tiny_bert_dir, texts, out)
    before = _contents(out, docs)
    stats = cache_stats(out)
    assert stats["shards"] == 5 and stats["duplicates"] == 1 and stats["documents"] == len(docs)
    assert sum(s["records"] for s in stats["shard_list"]) == len(docs) + 1
    summary = compact(out, progress=False)
    assert (summary.shards_before, summary.shards_after, summary.documents) == (5, 1, len(docs))
    assert summary.duplicates_dropped == 1 and summary.bytes_after < summary.bytes_before
    assert list_shards(out) == [summary.new_shard] and not list((out / "shards").glob("worker-*"))
    cache = open_cache(out)
    assert not cache.damage and cache.verify().ok and "compaction" not in cache.manifest
    after = _contents(out, docs)
    assert all(np.array_equal(before[d], after[d]) for d in docs)
    # a later build finds every document and appends new ones next to the merged shard
    assert build_cache(docs, out, BuildConfig(model=tiny_bert_dir, layer=2), progress=False).computed == 0
    assert "1 shard(s) -> 1" in str(compact(out, progress=False))  # nothing to merge


def test_remove_documents_reclaims_their_space(tiny_bert_dir: str, texts: list[str], tmp_path: Path) -> None:
    out = tmp_path / "c"
    docs = _sharded(tiny_bert_dir, texts, out)
    gone, kept = docs[:3], docs[3:]
    size = cache_stats(out)["bytes"]
    summary = remove_documents(out, docs=gone, keys=["00" * 32], progress=False)  # an unknown key is ignored
    assert summary.removed == 3
    cache = open_cache(out)
    assert len(cache) == len(kept) and cache.verify().ok and cache_stats(out)["bytes"] < size
    for d in gone:
        with pytest.raises(CacheMissError):
            cache.get(d)
    assert all(cache.get(d).hidden.shape[1] == 32 for d in kept)
    key = cache.keys[0].tobytes().hex()
    assert remove_documents(out, keys=[key], progress=False).removed == 1


def test_a_merge_killed_while_writing_leaves_the_old_layout(
    tiny_bert_dir: str,
    texts: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    nth_append_interrupted: Callable[[int], AbstractContextManager[None]],
) -> None:
    out = tmp_path / "c"
    docs = _sharded(tiny_bert_dir, texts, out)
    before = _contents(out, docs)
    monkeypatch.setattr(maintenance, "BATCH_DOCUMENTS", 8)
    with nth_append_interrupted(2):
        compact(out, progress=False)
    cache = open_cache(out)  # old shards, and a partial new one whose documents are duplicates
    assert not cache.damage and len(list_shards(out)) == 6
    assert all(np.array_equal(before[d], cache.get(d).hidden) for d in docs)
    assert compact(out, progress=False).shards_after == 1
    assert all(np.array_equal(before[d], v) for d, v in _contents(out, docs).items())


def test_a_merge_killed_while_deleting_is_finished_next_time(
    tiny_bert_dir: str, texts: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "c"
    docs = _sharded(tiny_bert_dir, texts, out)
    before = _contents(out, docs)
    real = maintenance._delete_shards

    def delete_two_then_die(root: Path, names: list[str]) -> list[str]:
        real(root, names[:2])
        raise KeyboardInterrupt

    monkeypatch.setattr(maintenance, "_delete_shards", delete_two_then_die)
    with pytest.raises(KeyboardInterrupt):
        compact(out, progress=False)
    monkeypatch.setattr(maintenance, "_delete_shards", real)
    cache = open_cache(out)  # the new shard holds everything; the shards already gone are not "lost"
    assert not cache.damage and "compaction" in cache.manifest
    assert all(np.array_equal(before[d], cache.get(d).hidden) for d in docs)
    deleted = collect_garbage(out)
    assert deleted and len(list_shards(out)) == 1 and "compaction" not in open_cache(out).manifest
    assert open_cache(out).verify().ok


def test_garbage_is_files_no_index_refers_to(tiny_bert_dir: str, texts: list[str], tmp_path: Path) -> None:
    out = tmp_path / "c"
    build_cache(texts[:10], out, BuildConfig(model=tiny_bert_dir, layer=2), progress=False)
    orphan = out / "shards" / "gone-00001.hidden"
    orphan.write_bytes(b"\0" * 100)
    assert collect_garbage(out) == [str(orphan)] and not orphan.exists()
    assert collect_garbage(out) == [] and len(open_cache(out)) == len(set(texts[:10]))
    busy = ShardWriter(out, "writing", 32, "float16")  # a writer before its first index record: not garbage
    try:
        assert collect_garbage(out) == [] and shard_paths(out, "writing")["hidden"].exists()
    finally:
        busy.close()


def test_maintenance_names_what_it_cannot_do(tiny_bert_dir: str, texts: list[str], tmp_path: Path) -> None:
    out = tmp_path / "c"
    build_cache(texts[:5], out, BuildConfig(model=tiny_bert_dir, layer=2), progress=False)
    with pytest.raises(ConfigError, match=r"shards \['nope'\] are not in"):
        compact(out, shards=["nope"], progress=False)
    with pytest.raises(ConfigError, match="works on a local cache directory"):
        compact("s3://bucket/cache", progress=False)
    stats = cache_stats(out)
    assert json.loads(json.dumps(stats))["dtype"] == "float16" and stats["shard_list"][0]["tokens"] > 0


def test_the_maintenance_commands(tiny_bert_dir: str, texts: list[str], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from embrecycle.cli import app

    out = tmp_path / "c"
    docs = _sharded(tiny_bert_dir, texts, out, shards=3)
    run = CliRunner().invoke
    r = run(app, ["cache", "stats", str(out), "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["shards"] == 4
    assert "worker-late" in run(app, ["cache", "stats", str(out)]).output
    r = run(app, ["cache", "compact", str(out), "-q"])
    assert r.exit_code == 0 and "4 shard(s) -> 1" in r.output
    data = tmp_path / "gone.txt"
    data.write_text("\n".join(docs[:2]) + "\n")
    r = run(app, ["cache", "remove", str(out), "--data", str(data), "-q"])
    assert r.exit_code == 0 and "removed 2 documents" in r.output and len(open_cache(out)) == len(docs) - 2
    r = run(app, ["cache", "remove", str(out)])
    assert r.exit_code == 2 and "nothing to remove" in r.output
    r = run(app, ["cache", "gc", str(out)])
    assert r.exit_code == 0 and "deleted 0 file(s)" in r.output


def test_gc_keeps_shards_whose_names_hold_dots(tiny_bert_dir: str, texts: list[str], tmp_path: Path) -> None:
    out = tmp_path / "c"
    config = BuildConfig(model=tiny_bert_dir, layer=2, shard="node1.cluster")
    build_cache(texts[:10], out, config, progress=False)
    stray = out / "shards" / "node1.plan.npz"  # the plan of a shard "node1" that was never indexed
    stray.write_bytes(b"x")
    assert collect_garbage(out) == [str(stray)]
    assert list_shards(out) == ["node1.cluster"] and len(open_cache(out)) == len(set(texts[:10]))


def test_a_shard_written_under_a_retired_name_survives_the_unfinished_merge(
    tiny_bert_dir: str, texts: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "c"
    _sharded(tiny_bert_dir, texts, out)

    def die(root: Path, names: list[str]) -> list[str]:
        raise KeyboardInterrupt

    real = maintenance._delete_shards
    monkeypatch.setattr(maintenance, "_delete_shards", die)
    with pytest.raises(KeyboardInterrupt):
        compact(out, progress=False)
    monkeypatch.setattr(maintenance, "_delete_shards", real)
    # the merge's note names worker-0 for deletion; someone deletes it by hand and writes a new worker-0
    for p in shard_paths(out, "worker-0").values():
        p.unlink(missing_ok=True)
    build_cache(["a brand new document."], out, BuildConfig(model=tiny_bert_dir, layer=2, shard="worker-0"))
    # a writer picking a free name steers clear of the names the note still lists
    writer = open_cache(out).writer()
    assert writer.name not in open_cache(out).manifest["compaction"]["replaced"]
    writer.close()
    collect_garbage(out)
    cache = open_cache(out)
    assert "worker-0" in list_shards(out) and cache.get("a brand new document.").hidden.shape[1] == 32
    assert not cache.damage and "compaction" not in cache.manifest


def test_a_damaged_cache_is_repaired_before_it_is_merged(tiny_bert_dir: str, texts: list[str], tmp_path: Path):
    from embrecycle import CacheCorruptedError

    out = tmp_path / "c"
    _sharded(tiny_bert_dir, texts, out)
    index = shard_paths(out, "worker-1")["index"]
    raw = bytearray(index.read_bytes())
    raw[40] ^= 0xFF  # the header's reserved bytes: a damaged header
    index.write_bytes(bytes(raw))
    with pytest.raises(CacheCorruptedError, match="run `embrecycle cache verify --repair"):
        compact(out, progress=False)
    with pytest.raises(CacheCorruptedError, match="then `cache remove` again"):
        remove_documents(out, keys=["ab" * 32], progress=False)
    assert index.exists()  # nothing was merged away


def test_gc_refuses_a_cache_that_lost_an_index(tiny_bert_dir: str, texts: list[str], tmp_path: Path) -> None:
    """A shard whose index was deleted has orphan-looking data files; gc must not delete them and hide the loss."""
    from embrecycle import CacheCorruptedError

    out = tmp_path / "c"
    _sharded(tiny_bert_dir, texts, out)
    paths = shard_paths(out, "worker-1")
    paths["index"].unlink()
    with pytest.raises(CacheCorruptedError, match="then `cache gc` again"):
        collect_garbage(out)
    assert paths["hidden"].exists() and paths["tokens"].exists()  # kept for whoever investigates the loss


def test_keys_are_given_whole(tiny_bert_dir: str, texts: list[str], tmp_path: Path) -> None:
    out = tmp_path / "c"
    build_cache(texts[:5], out, BuildConfig(model=tiny_bert_dir, layer=2), progress=False)
    short = open_cache(out).keys[0].tobytes().hex()[:16]
    with pytest.raises(ConfigError, match=f"key '{short}' is not a document key: give all 64 hex characters"):
        remove_documents(out, keys=[short], progress=False)
    with pytest.raises(ConfigError, match="key 'zz"):
        remove_documents(out, keys=["zz" * 32], progress=False)


def test_a_reader_opened_before_a_merge_goes_on_reading(tiny_bert_dir: str, texts: list[str], tmp_path: Path):
    """A long-lived reader (a server, a training run) keeps its entry indices through `compact` and `remove`."""
    out = tmp_path / "c"
    docs = _sharded(tiny_bert_dir, texts, out)
    before = _contents(out, docs)
    reader = open_cache(out)
    first = reader.get(docs[0]).hidden  # one shard mapped before the merge, the others not yet
    order = [reader.index_of(reader.key(d)) for d in docs]
    early = open_cache(out)  # reads only after a new shard took a retired shard's name
    compact(out, progress=False)
    build_cache(["a brand new document."], out, BuildConfig(model=tiny_bert_dir, layer=2, shard="worker-0"))
    assert all(np.array_equal(early.get(d).hidden, before[d]) for d in docs)
    assert np.array_equal(reader.get(docs[0]).hidden, first)
    assert all(np.array_equal(reader.get(d).hidden, before[d]) for d in docs)
    assert [reader.index_of(reader.key(d)) for d in docs] == order  # indices did not move
    batch = reader.read_batch(order[:5])
    assert torch.equal(batch.hidden[2, : reader.lengths[order[2]]], torch.from_numpy(before[docs[2]]).float())
    reader.refresh()  # re-reading the indices afterwards reports no loss (the manifest says what was merged)
    assert not reader.damage and len(reader) == len(docs) + 1  # and the new document
    late = open_cache(out)
    assert np.array_equal(late.get(docs[1]).hidden, before[docs[1]])  # its shard is mapped now
    remove_documents(out, docs=[docs[1]], progress=False)
    with pytest.raises(CacheMissError, match=r"is no longer in .*: it was removed .* Open the cache again"):
        late.get(docs[1])
    assert np.array_equal(late.get(docs[2]).hidden, before[docs[2]])


def test_remove_finishes_an_interrupted_merge_first(
    tiny_bert_dir: str, texts: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "c"
    docs = _sharded(tiny_bert_dir, texts, out)
    real = maintenance._delete_shards

    def die(root: Path, names: list[str]) -> list[str]:
        raise KeyboardInterrupt

    monkeypatch.setattr(maintenance, "_delete_shards", die)
    with pytest.raises(KeyboardInterrupt):
        compact(out, progress=False)
    monkeypatch.setattr(maintenance, "_delete_shards", real)
    summary = remove_documents(out, docs=docs[:2], progress=False)
    assert (summary.removed, summary.requested, summary.not_found, summary.remaining) == (2, 2, 0, 0)
    cache = open_cache(out)
    assert len(cache) == len(docs) - 2 and not cache.damage and "compaction" not in cache.manifest
    assert list_shards(out) == [summary.new_shard]


def test_remove_says_what_it_could_not_remove(
    tiny_bert_dir: str, texts: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from embrecycle.cli import app

    out = tmp_path / "c"
    docs = _sharded(tiny_bert_dir, texts, out, shards=2)
    holder = open_cache(out)
    busy = holder.shards[int(holder.shard_ids[holder.index_of(holder.key(docs[1]))])]
    writer = ShardWriter(out, busy, 32, holder.settings.dtype)  # another process is writing that shard
    try:
        summary = remove_documents(out, docs=[docs[1], "not in the cache."], progress=False)
        assert (summary.requested, summary.not_found, summary.remaining, summary.busy) == (2, 1, 1, [busy])
        assert "1 are STILL there" in str(summary)
        data = tmp_path / "gone.data"  # no extension that says its format
        data.write_text(json.dumps({"body": docs[1]}) + "\n")
        r = CliRunner().invoke(
            app, ["cache", "remove", str(out), "--data", str(data), "--format", "jsonl", "--text-field", "body", "-q"]
        )
        assert r.exit_code == 1 and "STILL there" in r.output
    finally:
        writer.close()
    r = CliRunner().invoke(
        app, ["cache", "remove", str(out), "--data", str(data), "--format", "jsonl", "--text-field", "body", "-q"]
    )
    assert r.exit_code == 0 and "removed 1 documents" in r.output and docs[1] not in open_cache(out)


def test_stats_lists_keys_and_fails_on_damage(tiny_bert_dir: str, texts: list[str], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from embrecycle.cli import app

    out = tmp_path / "c"
    docs = _sharded(tiny_bert_dir, texts, out, shards=2)
    r = CliRunner().invoke(app, ["cache", "stats", str(out), "--keys", "--json"])
    listed = json.loads(r.output)["keys"]
    assert r.exit_code == 0 and len(listed) == len(docs)
    key = open_cache(out).key(docs[3]).hex()
    assert key in CliRunner().invoke(app, ["cache", "stats", str(out), "--keys"]).output
    assert remove_documents(out, keys=[key], progress=False).removed == 1  # a listed key removes its document
    hidden = shard_paths(out, "worker-0")["hidden"]
    hidden.write_bytes(hidden.read_bytes()[:-100])  # truncated
    r = CliRunner().invoke(app, ["cache", "stats", str(out)])
    assert r.exit_code == 1 and "DAMAGED" in r.output
