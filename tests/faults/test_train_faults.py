"""kill -9 at seeded points of `embrecycle train`: the next command finishes the work, exactly as if never killed.

Two kinds of kill, both a real SIGKILL (no handler runs):
* at a numbered fault point (``EMBRECYCLE_KILL_AT``, :mod:`embrecycle.faults`): between every two steps
  whose order matters (each atomic write before and after its rename, each training step, each step of
  publishing the run), chosen at random (seeded) among all the points an uninterrupted run passes;
* at a random time (seeded) during a chain of resumed runs.

After every kill, a reader of the run directory either refuses it (unfinished) or gets the finished
run, whose weights equal the uninterrupted run's bit for bit; ``train --resume`` (or a plain ``train``
when the kill came before anything was written) then completes it, to the same weights.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

import embrecycle
from embrecycle import IncompleteRunError
from embrecycle.run_dir import staging_dir

pytestmark = pytest.mark.faults

POINTS = 10
TIMED_KILLS = 3
SEED = 19
COUNTS: dict[str, int] = {"points_killed": 0, "timed_kills": 0, "runs_resumed": 0, "restarted": 0, "mismatches": 0}


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


def _check_readers(run: Path, ref: dict[str, torch.Tensor]) -> None:
    """A reader gets the whole finished run or a refusal; never a run made of partial or mixed files."""
    try:
        embrecycle.load(run)
    except IncompleteRunError as e:
        assert "--resume" in str(e) or "metrics.json" in str(e), e
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
        rc, err = _finish(_train([*args, "--resume"], env))
    elif not run.exists():
        COUNTS["restarted"] += 1
        rc, err = _finish(_train(args, env))
    else:
        return
    assert rc == 0, err


def test_kill_at_seeded_fault_points_then_resume(setup: Any) -> None:
    root, env, args, points, ref, _ = setup
    assert len(points) >= 30, points  # steps, writes and the publishing steps are all points
    chosen = sorted(random.Random(SEED).sample(range(1, len(points) + 1), POINTS))
    for n in chosen:
        run = root / f"point-{n}"
        rc, err = _finish(_train(args(run), {**env, "EMBRECYCLE_KILL_AT": str(n)}))
        assert rc == -signal.SIGKILL, f"point {n} ({points[n - 1]}) was not reached: rc {rc}\n{err}"
        COUNTS["points_killed"] += 1
        _check_readers(run, ref)
        _complete(run, args(run), env)
        _check_readers(run, ref)
        assert _same_weights(run, ref), f"resumed after a kill at point {n} ({points[n - 1]}): other weights"
        assert not staging_dir(run).exists() and not list(root.glob(f".point-{n}.replaced-*"))
    assert COUNTS["mismatches"] == 0


def test_kill_at_random_times_in_a_chain_of_resumes(setup: Any) -> None:
    root, env, args, _, ref, seconds = setup
    rng = random.Random(SEED + 1)
    chain, attempts = 0, 0
    while COUNTS["timed_kills"] < TIMED_KILLS and attempts < 4 * TIMED_KILLS:
        attempts += 1
        run = root / f"timed-{chain}"
        resume = ["--resume"] if staging_dir(run).exists() else []
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
    print(f"\ntrain fault suite: {COUNTS}")
    assert COUNTS["timed_kills"] >= 1 and COUNTS["mismatches"] == 0
