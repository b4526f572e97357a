"""A build killed with SIGKILL loses at most its batch in flight and resumes to the same bytes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from embrecycle import BuildConfig, build_cache, open_cache
from embrecycle.cache.format import HEADER_SIZE, RECORD_SIZE
from embrecycle.cache.shard import shard_paths

CHILD = textwrap.dedent(
    """
    import json, sys, time
    from embrecycle import BuildConfig, build_cache
    from embrecycle.cache import shard as shard_mod
    append = shard_mod.ShardWriter.append
    def slow_append(self, entries):  # widen the window in which the kill lands
        n = append(self, entries)
        time.sleep(0.05)
        return n
    shard_mod.ShardWriter.append = slow_append
    model, out, docs = sys.argv[1], sys.argv[2], json.load(open(sys.argv[3]))
    build_cache(docs, out, BuildConfig(model=model, layer=2, batch_size=4), progress=False)
    """
)


def _records(out: Path) -> int:
    index = shard_paths(out, "local-00000")["index"]
    return max(0, (index.stat().st_size - HEADER_SIZE) // RECORD_SIZE) if index.exists() else 0


def test_sigkill_mid_build_resumes_to_identical_content(tiny_bert_dir: str, texts: list[str], tmp_path: Path):
    import json

    docs = texts + [t.upper() for t in texts]  # 120 documents, 30 batches
    (tmp_path / "docs.json").write_text(json.dumps(docs))
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", CHILD, tiny_bert_dir, str(killed), str(tmp_path / "docs.json")])
    deadline = time.time() + 120
    while _records(killed) < 20 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = _records(killed)
    assert 0 < done_before < len(set(docs)), "the kill should land mid-build"
    assert shard_paths(killed, "local-00000")["plan.npz"].exists()

    partial = open_cache(killed)
    assert partial.verify().ok  # nothing half-written is visible
    resumed = build_cache(docs, killed, BuildConfig(model=tiny_bert_dir, layer=2, batch_size=4), progress=False)
    assert resumed.reused == len(partial) and resumed.computed == len(set(docs)) - len(partial)
    assert not shard_paths(killed, "local-00000")["plan.npz"].exists()

    clean = tmp_path / "clean"
    build_cache(docs, clean, BuildConfig(model=tiny_bert_dir, layer=2, batch_size=4), progress=False)
    a, b = open_cache(killed), open_cache(clean)
    assert len(a) == len(b) == len(set(docs))
    for i in range(len(b)):
        j = a.index_of(b.keys[i].tobytes())
        assert j is not None
        ha, ta = a._rows(j)
        hb, tb = b._rows(i)
        assert np.array_equal(ha.view(np.uint16), hb.view(np.uint16)) and np.array_equal(ta, tb)
    assert a.verify().ok


def test_two_writers_build_disjoint_shards_of_one_cache(tiny_bert_dir: str, texts: list[str], tmp_path: Path):
    out = tmp_path / "c"
    cfg = dict(model=tiny_bert_dir, layer=2, batch_size=8)
    build_cache(texts[:30], out, BuildConfig(**cfg, shard="worker-a"), progress=False)
    build_cache(texts[30:], out, BuildConfig(**cfg, shard="worker-b"), progress=False)
    cache = open_cache(out)
    assert cache.shards == ["worker-a", "worker-b"]
    assert len(cache) == len(set(texts)) and all(t in cache for t in texts)
    assert cache.manifest["stats"]["documents"] == len(set(texts))


def test_kill_while_a_new_shard_writes_its_header_leaves_no_damage(
    tiny_bert_dir: str, texts: list[str], tmp_path: Path, monkeypatch
):
    """A kill between creating a shard's index and writing its header (CI caught one in `cache convert`) must
    leave the cache readable: the header is written beside the index and renamed into place."""
    from embrecycle import convert_cache
    from embrecycle.cache import shard as shard_mod

    source = tmp_path / "source"
    build_cache(texts, source, BuildConfig(model=tiny_bert_dir, layer=2, batch_size=4), progress=False)
    real_fsync = os.fsync

    def killed_fsync(fd: int) -> None:
        if ".index" in os.readlink(f"/proc/self/fd/{fd}"):  # a shard index's header is being written
            raise KeyboardInterrupt  # the process dies with the header not yet in place
        real_fsync(fd)

    monkeypatch.setattr(shard_mod.os, "fsync", killed_fsync)
    out = tmp_path / "converted"
    with pytest.raises(KeyboardInterrupt):
        convert_cache(source, out, "int8-token", progress=False)
    monkeypatch.setattr(shard_mod.os, "fsync", real_fsync)

    partial = open_cache(out)
    assert not partial.damage and len(partial) == 0
    summary = convert_cache(source, out, "int8-token", progress=False)
    assert summary.converted == len(open_cache(source)) and open_cache(out).verify().ok
