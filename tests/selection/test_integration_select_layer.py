"""Integration: `select-layer` on MiniLM-L6 and real bc5cdr sentences, then training at the chosen cut."""

from __future__ import annotations

from pathlib import Path

import pytest

from embrecycle.cache.store import Cache
from embrecycle.data.readers import read_examples
from embrecycle.data.writers import write_examples
from embrecycle.selection import SelectConfig, select_layer
from shared_data import require_shared_data

pytestmark = pytest.mark.integration


def test_select_layer_on_minilm_and_bc5cdr(tmp_path: Path) -> None:
    from embrecycle.offline_models import minilm_l6_path

    try:
        model = minilm_l6_path()
    except ImportError as e:
        pytest.skip(str(e))
    data = require_shared_data() / "bc5cdr"
    train = write_examples(read_examples(data / "train.conll")[:400], tmp_path / "train.conll")
    dev = write_examples(read_examples(data / "dev.conll")[:100], tmp_path / "dev.conll")
    sel = select_layer(
        SelectConfig(
            task="ner",
            model=model,
            train=str(train),
            dev=str(dev),
            out=str(tmp_path / "sel"),
            lr=1e-3,
            reference_lr=3e-4,
            sample=400,
            proxy_epochs=2,
            budget_minutes=30,
            target_retention=0.9,
            cache_root=str(tmp_path / "caches"),
        ),
        progress=None,
    )
    assert [c.layer for c in sel.candidates] == [2, 3, 4]
    assert sel.reference["proxy_score"] > 0.3  # the reference learned the task, so retention is predicted
    for c in sel.candidates:
        assert c.predicted_retention is not None and 0.5 < c.predicted_retention < 1.5
        assert c.half_retention is not None and isinstance(c.stable, bool)  # scored half-way and at the end
        assert c.train_speedup is not None and c.train_speedup > 1.2  # fewer layers run (ceiling 1.5x-3x)
        assert c.cache_bytes_per_token == pytest.approx(384 * 2, rel=0.2)  # hidden 384 in float16, plus tokens
        assert c.cache and len(Cache.open(c.cache)) == 400 + 100
    assert sel.recommended is None or sel.candidate(sel.recommended).stable
    assert (tmp_path / "sel" / "selection.md").exists()
