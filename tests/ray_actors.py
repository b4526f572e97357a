"""Misbehaving Ray actors for tests/test_cache_ray.py (shipped to the workers by value)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from embrecycle.batch_predict import PredictActor
from embrecycle.cache.location import local_path
from embrecycle.cache.ray_engine import LowerLayersActor


class DiesOnce(LowerLayersActor):
    """The first chunk any worker starts kills that worker's process (as a lost node would)."""

    def process(self, name: str, payload: str) -> dict[str, Any]:
        marker = local_path(self.location).parent / "died"
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return super().process(name, payload)
        os.close(fd)
        os._exit(1)


class FailsOnChunk(LowerLayersActor):
    """Refuses the chunk holding the text saved in ``<cache parent>/refuse.txt``."""

    def process(self, name: str, payload: str) -> dict[str, Any]:
        refused = (local_path(self.location).parent / "refuse.txt").read_text(encoding="utf-8")
        if any(doc == refused for batch in json.loads(payload) for _, doc, _ in batch):
            raise RuntimeError(f"chunk refused: {name}")
        return super().process(name, payload)


class PredictDiesOnce(PredictActor):
    """The first shard any predicting worker starts kills that worker's process (as a lost node would)."""

    def process(self, shard: Path) -> dict[str, Any]:
        marker = self.out.parent / "died"
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return super().process(shard)
        os.close(fd)
        os._exit(1)


__all__ = ["DiesOnce", "FailsOnChunk", "Path", "PredictDiesOnce"]
