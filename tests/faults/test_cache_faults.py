"""Fault injection on the cache: SIGKILL at seeded random moments of `cache build` and `cache verify --repair`,
and a corruption sweep over every file a cache consists of.

The kills are real ``SIGKILL`` signals sent after a seeded random delay, calibrated to the time an uninterrupted
run takes. So that a kill point costs milliseconds and not an interpreter start, a "zygote" process imports
embrecycle once and forks one child per command (before any torch op: no thread pool is forked).
``make faults`` (``-s``) prints the counts; they are also in ``fault-counts.json`` (see ``conftest.py``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from embrecycle import BuildConfig, build_cache, load_encoder, open_cache
from embrecycle.cache.format import HEADER_SIZE, RECORD_SIZE
from embrecycle.cache.shard import list_shards, shard_paths
from embrecycle.cache.store import Cache, restore_manifest
from embrecycle.errors import CacheCorruptedError, CacheError, CacheMissError

pytestmark = pytest.mark.faults

Record = Callable[[str, Mapping[str, object]], None]  # the fault_counts fixture (conftest.py)

SEED = 20261203
KILL_POINTS = 12
KILLS_PER_CHAIN = 3
REPAIR_KILLS = 8  # kills that must land while `verify --repair` runs (at most 4 * KILL_POINTS attempts)
LAYER, BATCH = 2, 4

ZYGOTE = textwrap.dedent(
    """
    import json, logging, os, sys
    from embrecycle import BuildConfig, build_cache, open_cache
    from embrecycle.cache.store import restore_manifest
    from embrecycle.progress import set_quiet

    set_quiet(True)  # no weight-loading bars, and no warnings: the test checks what the cache holds
    logging.getLogger("embrecycle").setLevel(logging.ERROR)

    def job(spec):
        if spec["kind"] == "build":
            docs = json.load(open(spec["docs"]))
            config = BuildConfig(model=spec["model"], layer=2, batch_size=4, shard=spec.get("shard"))
            build_cache(docs, spec["out"], config, progress=False)
        elif spec["kind"] == "convert":
            from embrecycle import convert_cache
            convert_cache(spec["source"], spec["out"], spec["dtype"], progress=False, batch_documents=8)
        elif spec["kind"] == "compact":
            from embrecycle.cache import maintenance
            maintenance.BATCH_DOCUMENTS = 8
            maintenance.compact(spec["out"], progress=False)
        else:  # what `embrecycle cache verify --repair` does
            restore_manifest(spec["out"])
            open_cache(spec["out"]).verify(repair=True)

    for line in sys.stdin:
        spec = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                job(spec)
            except BaseException as e:
                sys.stderr.write(f"child failed: {e!r}\\n")
                code = 3
            sys.stderr.flush()
            os._exit(code)
        print(pid, flush=True)
        _, status = os.waitpid(pid, 0)
        print(status, flush=True)
    """
)


class Zygote:
    """A process that has imported embrecycle and forks one child per command."""

    def __init__(self) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", ZYGOTE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )

    def run(
        self, spec: dict, kill_after: float | None = None, watch: Callable[[], bool] | None = None
    ) -> tuple[str, float]:
        """Run one command; SIGKILL it after ``kill_after`` seconds. Returns ``(outcome, seconds)``:
        outcome ``killed`` (the signal landed while it ran), ``ok`` or ``failed``; with ``watch``, seconds
        until ``watch()`` first held (polled every 2 ms) instead."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(spec) + "\n")
        self.proc.stdin.flush()
        pid = int(self.proc.stdout.readline())
        t0 = time.perf_counter()
        if kill_after is not None:
            time.sleep(kill_after)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        seen = None
        while watch is not None and seen is None and time.perf_counter() - t0 < 120:
            seen = time.perf_counter() - t0 if watch() else time.sleep(0.002)
        status = int(self.proc.stdout.readline())
        seconds = time.perf_counter() - t0 if seen is None else seen
        if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
            return "killed", seconds
        return ("ok" if os.WEXITSTATUS(status) == 0 else "failed"), seconds

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def zygote() -> Iterator[Zygote]:
    z = Zygote()
    yield z
    z.close()


@pytest.fixture(scope="module")
def docs(texts: list[str]) -> list[str]:
    return texts + [t.upper() for t in texts]  # 120 documents, 30 batches


@dataclass
class Counts:
    values: Counter = field(default_factory=Counter)

    def __getitem__(self, k: str) -> int:
        return self.values[k]

    def add(self, k: str, n: int = 1) -> None:
        self.values[k] += n

    def show(self, title: str, record: Record) -> None:
        record(title, dict(sorted(self.values.items())))


# ---- helpers --------------------------------------------------------------------------------------------------


def _stored(cache: Cache) -> dict[bytes, tuple[bytes, bytes]]:
    """Every trusted document of ``cache``: key -> (hidden bytes, tokens bytes), all checksums checked."""
    out = {}
    for i in range(len(cache)):
        h, t = cache._rows(i)
        out[cache.keys[i].tobytes()] = (h.tobytes(), t.tobytes())
    return out


def _served(cache: Cache, counts: Counts) -> dict[bytes, tuple[bytes, bytes]]:
    """What a reader gets from a damaged cache: the documents it serves (reads it refuses are counted)."""
    out = {}
    for i in range(len(cache)):
        try:
            h, t = cache._rows(i)
        except CacheCorruptedError:
            counts.add("reads_refused")
            continue
        out[cache.keys[i].tobytes()] = (h.tobytes(), t.tobytes())
    return out


def _shard_bytes(root: Path) -> dict[str, bytes]:
    return {
        f"{name}.{kind}": shard_paths(root, name)[kind].read_bytes()
        for name in list_shards(root)
        for kind in ("hidden", "tokens", "index")
    }


def _records(root: Path) -> int:
    total = 0
    for name in list_shards(root):
        size = shard_paths(root, name)["index"].stat().st_size
        total += max(0, (size - HEADER_SIZE) // RECORD_SIZE)
    return total


def _check_partial(root: Path, reference: dict[bytes, tuple[bytes, bytes]], counts: Counts) -> int:
    """What a reader sees after a kill: only complete, correct documents (or no cache yet). Returns how many."""
    if not (root / "manifest.json").exists():
        assert not list_shards(root), "shards without a manifest after a kill"
        counts.add("kill_before_manifest")
        return 0
    cache = open_cache(root)
    assert not cache.damage, cache.damage
    stored = _stored(cache)
    wrong = [k for k, v in stored.items() if reference[k] != v]
    counts.add("reader_mismatches", len(wrong))
    assert not wrong
    return len(stored)


def _write_docs(tmp_path: Path, docs: list[str]) -> Path:
    path = tmp_path / "docs.json"
    path.write_text(json.dumps(docs))
    return path


# ---- SIGKILL during cache build -------------------------------------------------------------------------------


def test_sigkill_during_build_at_random_points(
    zygote: Zygote, docs: list[str], tiny_bert_dir: str, tmp_path: Path, fault_counts: Record
) -> None:
    rng, counts = random.Random(SEED), Counts()
    spec = {"kind": "build", "model": tiny_bert_dir, "docs": str(_write_docs(tmp_path, docs))}
    t_start, ref_root = time.perf_counter(), tmp_path / "reference"
    outcome, full = zygote.run({**spec, "out": str(ref_root)})
    assert outcome == "ok"
    # the calibration: kills land between half the time to the first record and the end of a whole build
    _, first = zygote.run(
        {**spec, "out": str(tmp_path / "calibration")}, watch=lambda: _records(tmp_path / "calibration") > 0
    )
    low = first / 2
    reference, ref_bytes = _stored(open_cache(ref_root)), _shard_bytes(ref_root)
    assert len(reference) == len(set(docs))

    chain = 0
    enough = lambda: counts["points_killed"] >= KILL_POINTS and counts["kills_mid_build"] >= 3  # noqa: E731
    while not enough() and chain < 4 * KILL_POINTS:
        chain += 1
        out, done = tmp_path / f"chain-{chain}", 0
        for attempt in range(KILLS_PER_CHAIN + 1):  # kill, resume, kill again ... then let it finish
            last = attempt == KILLS_PER_CHAIN
            outcome, seconds = zygote.run(
                {**spec, "out": str(out)}, kill_after=None if last else rng.uniform(low, full)
            )
            assert outcome != "failed", f"a build after a kill failed (chain {chain})"
            now = _check_partial(out, reference, counts)
            assert now >= done, "a kill lost finished documents"
            if outcome == "ok":
                counts.add("builds_completed")
                counts.add("builds_resumed" if attempt else "builds_uninterrupted")
                if not attempt:  # a whole build outran the kill: recalibrate (the machine may be less loaded now)
                    full = min(full, seconds)
                break
            counts.add("points_killed")
            counts.add("kills_mid_build" if now > done else "kills_before_its_first_record")
            done = now
        final = open_cache(out)
        assert final.verify().ok and not final.damage
        mismatched = _shard_bytes(out) != ref_bytes
        counts.add("final_byte_mismatches", int(mismatched))
        assert not mismatched, f"chain {chain}: the resumed cache differs from an uninterrupted build"
        assert _stored(final) == reference
    counts.add("seconds", round(time.perf_counter() - t_start))
    counts.add("first_record_ms", round(first * 1000))
    counts.add("whole_build_ms", round(full * 1000))
    counts.show("cache build: kill -9 at random times", fault_counts)
    assert enough(), "too few kills landed mid-build"


# ---- SIGKILL during cache verify --repair ---------------------------------------------------------------------


def _damage(root: Path) -> None:
    """One damaged record in the middle of each of the three shards, and one flipped state byte."""
    for name in list_shards(root):
        index = shard_paths(root, name)["index"]
        raw = bytearray(index.read_bytes())
        raw[HEADER_SIZE + 3 * RECORD_SIZE + 10] ^= 0xFF
        index.write_bytes(bytes(raw))
    hidden = shard_paths(root, list_shards(root)[0])["hidden"]
    raw = bytearray(hidden.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    hidden.write_bytes(bytes(raw))


def test_sigkill_during_verify_repair(
    zygote: Zygote, docs: list[str], tiny_bert_dir: str, tmp_path: Path, fault_counts: Record
) -> None:
    rng, counts = random.Random(SEED + 1), Counts()
    t_start = time.perf_counter()
    base = tmp_path / "base"
    for i, shard in enumerate(("a", "b", "c")):
        part = docs[i * 40 : (i + 1) * 40]
        spec = {"kind": "build", "model": tiny_bert_dir, "docs": str(_write_docs(tmp_path, part)), "shard": shard}
        assert zygote.run({**spec, "out": str(base)})[0] == "ok"
    reference = _stored(open_cache(base))
    damaged = tmp_path / "damaged"
    shutil.copytree(base, damaged)
    _damage(damaged)
    timing = tmp_path / "timing"
    shutil.copytree(damaged, timing)
    outcome, full = zygote.run({"kind": "repair", "out": str(timing)})
    assert outcome == "ok" and open_cache(timing).verify().ok
    dropped = len(reference) - len(open_cache(timing))
    assert dropped == 4  # a record in each shard, and the document whose states were flipped

    all_docs = {"kind": "build", "model": tiny_bert_dir, "docs": str(_write_docs(tmp_path, docs)), "shard": "a"}
    point = 0
    while (point < KILL_POINTS or counts["points_killed"] < REPAIR_KILLS) and point < 4 * KILL_POINTS:
        point += 1
        out = tmp_path / f"repair-{point}"
        shutil.copytree(damaged, out)
        outcome, seconds = zygote.run({"kind": "repair", "out": str(out)}, kill_after=rng.uniform(0.0, full))
        counts.add("points_killed" if outcome == "killed" else "finished_before_the_kill")
        assert outcome != "failed"
        if outcome == "ok":  # the repair outran the kill: aim the next ones within its (maybe shorter) time
            full = min(full, seconds)
        cache = open_cache(out)  # a reader between the kill and the next command: damage is named, never served
        served = _served(cache, counts)
        assert all(reference[k] == v for k, v in served.items())
        assert len(served) >= len(reference) - dropped
        report = cache.verify(repair=True)  # the next command completes the repair
        counts.add("repairs_resumed" if report.problems else "repairs_already_done")
        assert open_cache(out).verify().ok
        assert _stored(open_cache(out)).items() <= reference.items()  # nothing finished was lost or changed
        assert len(open_cache(out)) == len(reference) - dropped
        assert zygote.run({**all_docs, "out": str(out)})[0] == "ok"  # the build recomputes exactly what was dropped
        final = open_cache(out)
        assert final.verify().ok and len(final) == len(reference)
        recomputed = [k for k in reference if _stored(final)[k] != reference[k]]
        counts.add("recomputed_not_bytewise_equal", len(recomputed))
        for k in recomputed:  # recomputed in another batch: equal up to padding effects
            i = final.index_of(k)
            assert i is not None
            got = np.frombuffer(final._rows(i)[0].tobytes(), np.float16)
            np.testing.assert_allclose(got, np.frombuffer(reference[k][0], np.float16), atol=2e-3)
    counts.add("attempts", point)
    counts.add("damaged_documents", dropped)
    counts.add("seconds", round(time.perf_counter() - t_start))
    counts.add("uninterrupted_repair_ms", round(full * 1000))
    counts.show("cache verify --repair: kill -9 at random times", fault_counts)
    assert counts["points_killed"] >= REPAIR_KILLS, "too few kills landed while the repair ran"
    assert counts["repairs_resumed"] >= 1, "no kill left a repair unfinished for the next command"


# ---- SIGKILL during cache convert and cache compact ----------------------------------------------------------


def _sharded_cache(zygote: Zygote, docs: list[str], model: str, tmp_path: Path) -> Path:
    base = tmp_path / "base"
    for i, shard in enumerate(("a", "b", "c")):
        part = docs[i * 40 : (i + 1) * 40]
        spec = {"kind": "build", "model": model, "docs": str(_write_docs(tmp_path, part)), "shard": shard}
        assert zygote.run({**spec, "out": str(base)})[0] == "ok"
    return base


@pytest.mark.parametrize("kind", ["convert", "compact"])
def test_sigkill_during_convert_and_compact(
    zygote: Zygote, docs: list[str], tiny_bert_dir: str, tmp_path: Path, fault_counts: Record, kind: str
) -> None:
    """A kill at a random moment leaves a readable cache (the old layout or the new one, never neither) whose
    documents are the reference's, and the next run completes the work."""
    rng, counts = random.Random(SEED + (2 if kind == "convert" else 3)), Counts()
    t_start = time.perf_counter()
    base = _sharded_cache(zygote, docs, tiny_bert_dir, tmp_path)

    def spec(out: Path) -> dict[str, object]:
        if kind == "convert":
            return {"kind": "convert", "source": str(base), "out": str(out), "dtype": "int8-token"}
        return {"kind": "compact", "out": str(out)}

    def target(name: str) -> Path:
        out = tmp_path / name
        if kind == "compact":
            shutil.copytree(base, out)
        return out

    timing = target("timing")
    outcome, full = zygote.run(spec(timing))
    assert outcome == "ok"
    reference = _stored(open_cache(timing))
    assert len(reference) == len(set(docs))
    point = 0
    while (point < KILL_POINTS or counts["points_killed"] < KILL_POINTS // 2) and point < 4 * KILL_POINTS:
        point += 1
        out = target(f"{kind}-{point}")
        outcome, seconds = zygote.run(spec(out), kill_after=rng.uniform(0.0, full))
        counts.add("points_killed" if outcome == "killed" else "finished_before_the_kill")
        assert outcome != "failed"
        if outcome == "ok":
            full = min(full, seconds)
        if (out / "manifest.json").exists():  # a reader between the kill and the next command
            cache = open_cache(out)
            assert not cache.damage, cache.damage
            stored = _stored(cache)
            if kind == "compact":
                assert stored == reference  # the old layout or the new one: every document, unchanged
            else:
                assert stored.items() <= reference.items()  # converted so far: complete and correct
            counts.add("readable_after_kill")
        else:
            counts.add("kill_before_manifest")
        assert zygote.run(spec(out))[0] == "ok"  # the next run completes it
        final = open_cache(out)
        assert final.verify().ok and _stored(final) == reference
        if kind == "compact":
            assert len(list_shards(out)) == 1 and "compaction" not in final.manifest
    counts.add("attempts", point)
    counts.add("seconds", round(time.perf_counter() - t_start))
    counts.add("uninterrupted_ms", round(full * 1000))
    counts.show(f"cache {kind}: kill -9 at random times", fault_counts)
    assert counts["points_killed"] >= KILL_POINTS // 2, f"too few kills landed while {kind} ran"


# ---- corruption sweep -----------------------------------------------------------------------------------------


def _cases(path: Path) -> Iterator[tuple[str, Callable[[Path], None]]]:
    size = path.stat().st_size
    yield "delete", lambda p: p.unlink()
    cuts = {0, 1, size // 2, size - 1, HEADER_SIZE, HEADER_SIZE + RECORD_SIZE * 5, size - RECORD_SIZE}
    for n in sorted(c for c in cuts if 0 <= c < size):
        yield f"truncate@{n}", lambda p, n=n: os.truncate(p, n)
    flips = {0, 9, 17, 40, size // 3, size // 2, size - 1, HEADER_SIZE + 2 * RECORD_SIZE + 5}
    for pos in sorted(f for f in flips if 0 <= f < size):
        for mask in (0xFF, 0x01):
            yield f"flip{mask:02x}@{pos}", lambda p, pos=pos, mask=mask: _flip(p, pos, mask)


def _flip(path: Path, pos: int, mask: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[pos] ^= mask
    path.write_bytes(bytes(raw))


def _names_file(message: str, rel: str) -> bool:
    stem = Path(rel).name.split(".")[0] or Path(rel).name  # a shard's name, or manifest / settings
    return rel in message or Path(rel).name in message or (stem and f"{stem}." in message) or f"'{stem}'" in message


def _read_outcome(root: Path, rel: str, docs: list[str], reference: dict[str, np.ndarray]) -> str:
    """``harmless``, ``detected`` or ``silent:<why>`` for what a reader of the damaged cache gets."""
    try:
        cache = open_cache(root)
    except (CacheError, OSError) as e:
        return "detected" if _names_file(str(e), rel) else f"silent:unnamed open error {e}"
    if cache.damage and not any(_names_file(d, rel) for d in cache.damage):
        return f"silent:damage not naming {rel}: {cache.damage}"
    detected = bool(cache.damage)
    problems = cache.verify().problems  # what only `cache verify` checks: the settings copy beside the shards
    if problems and not any(_names_file(p, rel) for p in problems):
        return f"silent:verify does not name {rel}: {problems}"
    detected = detected or bool(problems)
    for doc in docs:
        try:
            got = cache.get(doc).hidden
        except CacheCorruptedError as e:
            if not _names_file(str(e), rel):
                return f"silent:unnamed read error {e}"
            detected = True
            continue
        except CacheMissError:
            return "silent:a cached document went missing"
        if not np.array_equal(got, reference[doc]):
            return "silent:wrong states"
    return "detected" if detected else "harmless"


def _recover(root: Path, docs: list[str], config: BuildConfig, encoder: object) -> None:
    """Follow the messages: restore or replace the manifest, repair, rebuild."""
    try:
        open_cache(root)
    except CacheCorruptedError as e:
        if "delete it" in str(e):
            (root / "manifest.json").unlink()
    restore_manifest(root)
    with contextlib.suppress(FileNotFoundError):  # no cache left to repair: the build starts one
        open_cache(root).verify(repair=True)
    build_cache(docs, root, config, encoder=encoder, progress=False)  # type: ignore[arg-type]


LOCK_SUFFIX = ".lock"


def test_corruption_sweep_over_every_cache_file(
    tiny_bert_dir: str, docs: list[str], tmp_path: Path, fault_counts: Record
) -> None:
    counts, t_start = Counts(), time.perf_counter()
    encoder = load_encoder(tiny_bert_dir, LAYER)
    config = BuildConfig(model=tiny_bert_dir, layer=LAYER, batch_size=BATCH, dtype="float32")
    base = tmp_path / "base"
    build_cache(docs[:50], base, dataclasses.replace(config, shard="a"), encoder=encoder, progress=False)
    build_cache(docs, base, config, encoder=encoder, progress=False)
    ref_cache = open_cache(base)
    reference = {d: ref_cache.get(d).hidden for d in docs}
    files = sorted(str(p.relative_to(base)) for p in base.rglob("*") if p.is_file())
    assert {"manifest.json", "shards/settings.json", "shards/a.index", "shards/local-00000.hidden"} <= set(files)
    failures, harmless = [], []
    for rel in files:
        counts.add(f"cases_{_kind(rel)}", 0)
        for case, damage in _cases(base / rel):
            counts.add(f"cases_{_kind(rel)}")
            root = tmp_path / "case"
            shutil.rmtree(root, ignore_errors=True)
            shutil.copytree(base, root)
            damage(root / rel)
            outcome = _read_outcome(root, rel, docs, reference)
            counts.add(outcome.split(":")[0])
            counts.add("cases")
            if outcome == "harmless":
                harmless.append(f"{rel} {case}")
            if outcome.startswith("silent"):
                failures.append(f"{rel} {case}: {outcome}")
                continue
            if outcome == "detected":
                _recover(root, docs, config, encoder)
                cache = open_cache(root)
                bad = [d for d in docs if not np.allclose(cache.get(d).hidden, reference[d], atol=1e-5)]
                if not cache.verify().ok or bad or cache.damage:
                    failures.append(f"{rel} {case}: not recovered ({len(bad)} wrong documents)")
                counts.add("recovered")
    counts.add("files", len(files))
    counts.add("seconds", round(time.perf_counter() - t_start))
    counts.show("cache corruption sweep: truncate / flip / delete every file", fault_counts)
    assert not failures, "\n".join(failures)
    locks = [rel for rel in files if rel.endswith(LOCK_SUFFIX)]
    assert locks and sorted(harmless) == sorted(f"{rel} delete" for rel in locks), (
        f"only a lock file's deletion may go unnoticed (the lock is taken anew); harmless: {harmless}"
    )


def _kind(rel: str) -> str:
    """What a cache file is, for the counts: manifest, settings, lock, or a shard's hidden/index/tokens file."""
    name = Path(rel).name
    if name.endswith(LOCK_SUFFIX):
        return "lock"
    if name in ("manifest.json", "settings.json"):
        return name.split(".")[0]
    return name.rsplit(".", 1)[-1]
