"""Integration: MiniLM-L6 trained from its layer-3 cache on slices of sci-cite and bc5cdr."""

from __future__ import annotations

from pathlib import Path

import pytest

import embrecycle
from embrecycle.training import TrainConfig, train
from shared_data import require_shared_data

pytestmark = pytest.mark.integration


def _minilm() -> str:
    from embrecycle.offline_models import minilm_l6_path

    try:
        return minilm_l6_path()
    except ImportError as e:
        pytest.skip(str(e))


@pytest.mark.parametrize(
    ("task", "folder", "ext", "metric", "floor"),
    [("classification", "sci-cite", "jsonl", "macro_f1", 0.5), ("ner", "bc5cdr", "conll", "f1", 0.4)],
)
def test_minilm_learns_real_tasks_from_the_cache(
    task: str, folder: str, ext: str, metric: str, floor: float, tmp_path: Path
) -> None:
    data = require_shared_data() / folder
    cfg = TrainConfig(
        task=task,
        model=_minilm(),
        layer=3,
        train=str(data / f"train.{ext}"),
        dev=str(data / f"dev.{ext}"),
        out=str(tmp_path / "run"),
        cache=str(tmp_path / "cache"),
        epochs=3,
        lr=2e-4,
        batch_size=16,
        max_length=64,
        train_limit=400,
        dev_limit=200,
    )
    result = train(cfg, progress=False)
    # chance: macro-F1 about 0.33 for 3 balanced guesses; entity F1 near 0
    assert result.best[metric] > floor, result.best
    model = embrecycle.load(result.run_dir)
    scores = model.evaluate(model.read(data / f"dev.{ext}")[:50])
    assert scores["cache_misses"] <= 50 and 0.0 <= scores[metric] <= 1.0
