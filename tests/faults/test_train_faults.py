"""kill -9 at seeded points of `embrecycle train`: the next command finishes the work, exactly as if never killed.

Two kinds of kill, both a real SIGKILL (no handler runs):
* at a numbered fault point (``EMBRECYCLE_KILL_AT``, :mod:`embrecycle.faults`): between every two steps
  whose order matters (each atomic write before and after its rename, each training step, each step of
  publishing the run), chosen at random (seeded) among all the points an uninterrupted run passes, plus
  the fixed points where the order matters most (:data:`FIXED`: the staging directory before its marker,
  the first checkpoint, the final ``run.json``, each step of publishing);
* at a random time (seeded) during a chain of resumed runs.

After every kill, a reader of the run directory either refuses it (unfinished) or gets the finished
run, whose weights equal the uninterrupted run's bit for bit; ``train --resume`` (or a plain ``train``
when the kill came before anything was written) then completes it, to the same weights.

``--overwrite`` has its own kills (:data:`OVERWRITE_POINTS`): the old run is served whole until the new
one is published, a kill between the two renames of publishing leaves no run at ``OUT`` (readers refuse
it, naming ``--resume``), and ``--resume`` publishes the finished new run.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

import embrecycle
from embrecycle import IncompleteRunError
from embrecycle.run_dir import staging_dir

pytestmark = pytest.mark.faults

Record = Callable[[str, Mapping[str, object]], None]  # the fault_counts fixture (conftest.py)

POINTS = 10
TIMED_KILLS = 3
SEED = 19
FIXED = (  # (point, which occurrence): where a kill finds the run half-way between two states
    ("write INCOMPLETE", 0),  # the staging directory exists, its marker does not yet
    ("write model.safetensors", 0),  # the first checkpoint, written but not renamed into place
    ("write run.json", -1),  # the final run.json (with every file's checksum), not renamed into place
    ("publish: marker removed", 0),  # finished, not published
    ("publish: renamed", 0),  # published, the resume state not yet deleted
)
OVERWRITE_POINTS = {  # kill point of `train --overwrite` -> what a reader of OUT gets right after the kill
    "train step": "old",
    "publish: marker removed": "old",
    "publish: old run moved aside": "refused",  # between the two renames: no run at OUT
    "publish: renamed": "new",
}
COUNTS: dict[str, int] = {
    "points_killed": 0,
    "fixed_points_killed": 0,
    "seeded_points_killed": 0,
    "timed_kills": 0,
    "overwrite_points_killed": 0,
    "runs_resumed": 0,
    "published_by_resume": 0,
    "restarted": 0,
    "refused_after_kill": 0,
    "timed_resumes": 0,
    "mismatches": 0,
}


def _train(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    cli = [sys.executable, "-c", "from embrecycle.cli import main; main()", "train", "-q", *args]
    return subprocess.Popen(cli, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _finish(proc: subprocess.Popen[bytes], timeout: float = 300) -> tuple[int, str]:
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err.decode(errors="replace")


@pytest.fixture(scope="module")
def setup(tiny_bert_dir: str, toy_classification: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("train-faults")
    env = {**os.environ, "EMBRECYCLE_PRECISION": "fp32", "OMP_NUM_THREADS": "1", "EMBRECYCLE_PROGRESS_SECONDS": "60"}
    env.pop("EMBRECYCLE_KILL_AT", None)

    def args(out: Path) -> list[str]:
        return [
            "--task", "classification", "--model", tiny_bert_dir, "--layer", "2",
            "--train", str(toy_classification["train"]), "--dev", str(toy_classification["dev"]),
            "--out", str(out), "--cache", str(root / "cache"), "--epochs", "3", "--batch-size", "8",
            "--lr", "1e-3", "--eval-every", "2", "--device", "cpu", "--precision", "fp32",
        ]  # fmt: skip

    rc, err = _finish(_train(args(root / "warm-up"), env))  # builds the cache: every later run reads it
    assert rc == 0, err
    log = root / "points.log"
    t0 = time.perf_counter()
    rc, err = _finish(_train(args(root / "ref"), {**env, "EMBRECYCLE_FAULT_LOG": str(log)}))
    assert rc == 0, err
    seconds = time.perf_counter() - t0
    points = log.read_text().splitlines()
    ref = load_file(str(root / "ref" / "model.safetensors"))
    return root, env, args, points, ref, seconds


def _same_weights(run: Path, ref: dict[str, torch.Tensor]) -> bool:
    got = load_file(str(run / "model.safetensors"))
    return got.keys() == ref.keys() and all(torch.equal(got[k], ref[k]) for k in ref)


def _point(points: list[str], name: str, which: int) -> int:
    """The number of the point ``name`` (its ``which``-th occurrence) in a run's fault log."""
    found = [i + 1 for i, line in enumerate(points) if line.split(" ", 1)[1] == name]
    assert found, f"an uninterrupted run passes no point {name!r}"
    return found[which]


def _check_readers(run: Path, ref: dict[str, torch.Tensor]) -> None:
    """A reader gets the whole finished run or a refusal; never a run made of partial or mixed files."""
    try:
        embrecycle.load(run)
    except IncompleteRunError as e:
        assert "--resume" in str(e) or "metrics.json" in str(e), e
        COUNTS["refused_after_kill"] += 1
        return
    except FileNotFoundError:
        assert not run.exists() and not staging_dir(run).exists()
        return
    if not _same_weights(run, ref):
        COUNTS["mismatches"] += 1
        raise AssertionError(f"{run} was readable with weights that differ from the uninterrupted run's")


def _complete(run: Path, args: list[str], env: dict[str, str]) -> None:
    """The next command after a kill: --resume when an unfinished run is there, else train (or nothing)."""
    if staging_dir(run).exists():
        COUNTS["runs_resumed"] += 1
        finished = (staging_dir(run) / "metrics.json").exists() and not (staging_dir(run) / "INCOMPLETE").exists()
        COUNTS["published_by_resume"] += finished  # killed after training ended: --resume only publishes it
        rc, err = _finish(_train([*args, "--resume"], env))
    elif not run.exists():
        COUNTS["restarted"] += 1
        rc, err = _finish(_train(args, env))
    else:
        return
    assert rc == 0, err


def test_kill_at_seeded_fault_points_then_resume(setup: Any, fault_counts: Record) -> None:
    root, env, args, points, ref, _ = setup
    assert len(points) >= 30, points  # steps, writes and the publishing steps are all points
    seeded = set(random.Random(SEED).sample(range(1, len(points) + 1), POINTS))
    fixed = {_point(points, name, which) for name, which in FIXED}
    for n in sorted(seeded | fixed):
        run = root / f"point-{n}"
        rc, err = _finish(_train(args(run), {**env, "EMBRECYCLE_KILL_AT": str(n)}))
        assert rc == -signal.SIGKILL, f"point {n} ({points[n - 1]}) was not reached: rc {rc}\n{err}"
        COUNTS["points_killed"] += 1
        COUNTS["fixed_points_killed" if n in fixed else "seeded_points_killed"] += 1
        _check_readers(run, ref)
        _complete(run, args(run), env)
        _check_readers(run, ref)
        assert _same_weights(run, ref), f"resumed after a kill at point {n} ({points[n - 1]}): other weights"
        assert not staging_dir(run).exists() and not list(root.glob(f".point-{n}.replaced-*"))
    assert COUNTS["published_by_resume"] >= 1  # the kill after training ended, before publishing
    assert COUNTS["mismatches"] == 0
    fault_counts(
        "train: kill -9 at fault points",
        {
            "points_in_a_run": len(points),
            "killed_at": ", ".join(f"{n} {points[n - 1].split(' ', 1)[1]}" for n in sorted(seeded | fixed)),
            **{k: COUNTS[k] for k in ("points_killed", "fixed_points_killed", "seeded_points_killed")},
            **{k: COUNTS[k] for k in ("runs_resumed", "published_by_resume", "restarted", "mismatches")},
        },
    )


def _reader_gets(run: Path, new: dict[str, torch.Tensor], old: dict[str, torch.Tensor]) -> str:
    """What a reader of ``run`` gets while it is being replaced: the ``old`` run, the ``new`` one, or ``refused``."""
    try:
        embrecycle.load(run)
    except IncompleteRunError as e:
        assert "--resume" in str(e), e
        return "refused"
    for name, weights in (("new", new), ("old", old)):
        if _same_weights(run, weights):
            return name
    COUNTS["mismatches"] += 1
    raise AssertionError(f"{run} was readable with weights of neither the old run nor the new one")


def test_kill_while_overwriting_a_run(setup: Any, fault_counts: Record) -> None:
    root, env, args, _, ref, _ = setup
    old_run = root / "old"
    rc, err = _finish(_train([*args(old_run), "--seed", "7"], env))  # the run to replace: other weights
    assert rc == 0, err
    old = load_file(str(old_run / "model.safetensors"))
    assert not _same_weights(old_run, ref)
    log, probe = root / "overwrite-points.log", root / "overwrite-probe"
    shutil.copytree(old_run, probe)
    rc, err = _finish(_train([*args(probe), "--overwrite"], {**env, "EMBRECYCLE_FAULT_LOG": str(log)}))
    assert rc == 0 and _same_weights(probe, ref), err
    points = log.read_text().splitlines()
    steps = [i + 1 for i, line in enumerate(points) if line.endswith(" train step")]
    chosen = {name: _point(points, name, 0) for name in OVERWRITE_POINTS}
    chosen["train step"] = steps[len(steps) // 2]
    left_aside = 0
    for name, n in chosen.items():
        run = root / f"overwrite-{n}"
        shutil.copytree(old_run, run)
        rc, err = _finish(_train([*args(run), "--overwrite"], {**env, "EMBRECYCLE_KILL_AT": str(n)}))
        assert rc == -signal.SIGKILL, f"point {n} ({name}) was not reached: rc {rc}\n{err}"
        COUNTS["overwrite_points_killed"] += 1
        assert _reader_gets(run, ref, old) == OVERWRITE_POINTS[name], f"after a kill at {name}"
        _complete(run, args(run), env)  # --resume: finishes (or only publishes) the new run
        assert _reader_gets(run, ref, old) == "new", f"after a kill at {name}, then the next command"
        assert not staging_dir(run).exists()
        aside = list(root.glob(f".{run.name}.replaced-*"))
        if name == "publish: renamed":  # killed before deleting the old run: it stays aside, whole
            assert len(aside) == 1 and _same_weights(aside[0], old)
            left_aside += 1
        else:
            assert not aside
    assert COUNTS["mismatches"] == 0
    fault_counts(
        "train --overwrite: kill -9 at publishing",
        {
            "killed_at": ", ".join(f"{n} {name}" for name, n in chosen.items()),
            "overwrite_points_killed": COUNTS["overwrite_points_killed"],
            "old_run_served_after_kill": sum(v == "old" for v in OVERWRITE_POINTS.values()),
            "refused_between_the_renames": sum(v == "refused" for v in OVERWRITE_POINTS.values()),
            "old_run_left_aside": left_aside,
            "mismatches": COUNTS["mismatches"],
        },
    )


def test_kill_at_random_times_in_a_chain_of_resumes(setup: Any, fault_counts: Record) -> None:
    root, env, args, _, ref, seconds = setup
    rng = random.Random(SEED + 1)
    chain, attempts = 0, 0
    while COUNTS["timed_kills"] < TIMED_KILLS and attempts < 4 * TIMED_KILLS:
        attempts += 1
        run = root / f"timed-{chain}"
        resume = ["--resume"] if staging_dir(run).exists() else []
        COUNTS["timed_resumes"] += bool(resume)
        proc = _train(args(run) + resume, env)
        time.sleep(rng.uniform(0.3, 0.9) * seconds)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            COUNTS["timed_kills"] += 1
        proc.communicate()
        _check_readers(run, ref)
        if run.exists():  # finished before the kill: check it, then start another chain
            assert _same_weights(run, ref)
            chain += 1
    for c in range(chain + 1):
        run = root / f"timed-{c}"
        _complete(run, args(run), env)
        _check_readers(run, ref)
        assert _same_weights(run, ref)
    assert COUNTS["timed_kills"] >= 1 and COUNTS["mismatches"] == 0
    fault_counts(
        "train: kill -9 at random times",
        {k: COUNTS[k] for k in ("timed_kills", "timed_resumes", "mismatches")} | {"chains": chain + 1},
    )
