"""Integration: the offline pretrained models (MiniLM-L6, MPNet-base) on real sci-cite text."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import cast

import pytest
import torch

from embrecycle import BuildConfig, build_cache, load_encoder, open_cache
from embrecycle.data import read_examples
from shared_data import require_shared_data

pytestmark = pytest.mark.integration


def _model_path(name: str) -> str:
    from embrecycle import offline_models

    try:
        return offline_models.minilm_l6_path() if name == "minilm" else offline_models.mpnet_base_path()
    except ImportError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def scicite_texts() -> list[str]:
    data = require_shared_data()
    examples = itertools.islice(read_examples(data / "sci-cite" / "dev.jsonl"), 24)
    return [cast(str, e.doc) for e in examples]  # JSONL documents are texts


@pytest.mark.parametrize("name", ["minilm", "mpnet"])
def test_split_reproduces_pretrained_model(name: str, scicite_texts: list[str]) -> None:
    enc = load_encoder(_model_path(name), 0)
    batch = enc.tokenizer(scicite_texts[:8], padding=True, truncation=True, max_length=128, return_tensors="pt")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert (mask == 0).any()
    with torch.inference_mode():
        ref = enc.split.base(input_ids=ids, attention_mask=mask).last_hidden_state
        for k in sorted({0, 1, enc.split.num_layers // 2, enc.split.num_layers - 1, enc.split.num_layers}):
            enc.split.layer = k
            out = enc.split.upper(enc.split.lower(ids, mask), mask)
            diff = ((out - ref).abs() * mask[..., None]).max().item()
            assert diff <= 1e-5, f"{name} k={k}: {diff}"


def test_minilm_cache_of_real_data(scicite_texts: list[str], tmp_path: Path) -> None:
    model = _model_path("minilm")
    s = build_cache(scicite_texts, tmp_path / "c", BuildConfig(model=model, layer=3), progress=False)
    assert s.computed == len(set(scicite_texts))
    cache = open_cache(tmp_path / "c")
    assert cache.verify().ok
    enc = load_encoder(model, 3)
    ids = enc.tokenizer(scicite_texts[0], return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        ref = enc.split.lower(ids, torch.ones_like(ids))[0]
    assert torch.allclose(torch.from_numpy(cache.get(scicite_texts[0]).hidden), ref, atol=1e-2)
