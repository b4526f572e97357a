"""A corruption sweep over every file of a finished run: truncate, flip a byte, delete; each case is named.

Every reader (``embrecycle.load``, ``TaskSet.load``, ``--init-from``) goes through the run record, which
checks ``run.json`` against its own checksum and every other file against the checksums it lists.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

import embrecycle
from embrecycle import EmbRecycleError, TaskSet
from embrecycle.training import TrainConfig, train

pytestmark = pytest.mark.faults

Record = Callable[[str, Mapping[str, object]], None]  # the fault_counts fixture (conftest.py)


@pytest.fixture(scope="module")
def finished_run(
    tiny_bert_dir: str, toy_classification: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    root = tmp_path_factory.mktemp("run-corruption")
    cfg = TrainConfig(
        task="classification", model=tiny_bert_dir, layer=2, train=str(toy_classification["train"]),
        dev=str(toy_classification["dev"]), out=str(root / "run"), cache=str(root / "cache"), epochs=1,
        batch_size=8, lr=1e-3, device="cpu", precision="fp32",
    )  # fmt: skip
    return Path(train(cfg, progress=False).run_dir)


def _cases(size: int) -> list[tuple[str, int]]:
    cuts = sorted({0, 1, size // 2, size - 1})
    flips = sorted({0, size // 3, size // 2, size - 2})
    return [("truncate", n) for n in cuts] + [("flip", i) for i in flips] + [("delete", 0)]


def _damage(path: Path, how: str, at: int) -> None:
    data = path.read_bytes()
    if how == "truncate":
        path.write_bytes(data[:at])
    elif how == "flip":
        b = bytearray(data)
        b[at] ^= 0x20 if chr(b[at]).isalpha() else 0x01  # in JSON text: a letter's case, else the low bit
        path.write_bytes(bytes(b))
    else:
        path.unlink()


def _outcome(run: Path, name: str, original: embrecycle.TaskModel) -> str:
    """ "detected" (an error naming the file) or "harmless" (the run loads exactly as the undamaged one)."""
    try:
        model = embrecycle.load(run)
    except EmbRecycleError as e:
        assert name in str(e), f"{run.name}: {e}"
        with pytest.raises(EmbRecycleError, match=name.replace(".", r"\.")):
            TaskSet.load([run])
        return "detected"
    same = model.record == original.record and all(
        a.equal(b) for a, b in zip(model.model.task_model.state_dict().values(),
                                   original.model.task_model.state_dict().values(), strict=True)
    )  # fmt: skip
    assert same, f"{run.name}: a damaged run loaded with other content"
    return "harmless"


def test_every_damaged_run_file_is_detected_and_named(finished_run: Path, tmp_path: Path, fault_counts: Record) -> None:
    files = sorted(p.name for p in finished_run.iterdir())
    assert {"run.json", "labels.json", "metrics.json", "model.safetensors", "training_curves.png"} <= set(files)
    original = embrecycle.load(finished_run)
    counts = {"cases": 0, "detected": 0, "harmless": 0}
    harmless: list[str] = []
    for name in files:
        for how, at in _cases((finished_run / name).stat().st_size):
            run = tmp_path / f"{name}-{how}-{at}"
            shutil.copytree(finished_run, run)
            _damage(run / name, how, at)
            counts["cases"] += 1
            outcome = _outcome(run, name, original)
            counts[outcome] += 1
            if outcome == "harmless":
                harmless.append(f"{name} {how}@{at}")
            shutil.rmtree(run)
    fault_counts("run corruption sweep: truncate / flip / delete every file", {**counts, "files": len(files)})
    assert counts["cases"] > 40 and counts["harmless"] <= 2  # only a trailing newline of run.json may go
    assert all(case.startswith("run.json ") for case in harmless), harmless
