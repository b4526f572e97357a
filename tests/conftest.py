"""Shared fixtures: tiny random encoders saved as real model directories (loaded with from_pretrained)."""

from __future__ import annotations

import string
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from types import ModuleType

import pytest
import torch
from transformers import AutoModel, BertConfig, BertTokenizer

from tiny_models import WORDS


def _vocab() -> list[str]:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = list(string.ascii_lowercase + string.digits + ".,;:()-'\"!?")
    return specials + WORDS + chars + ["##" + c for c in string.ascii_lowercase + string.digits]


def save_tiny_bert(path: Path, seed: int = 0, layers: int = 4, hidden: int = 32) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    vocab = _vocab()
    tok = BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True, model_max_length=64)
    tok.save_pretrained(path)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=64,
    )
    torch.manual_seed(seed)
    AutoModel.from_config(config).save_pretrained(path)
    return path


@pytest.fixture(autouse=True)
def _fp32_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """``precision="auto"`` means fp32 in tests (exact comparisons must not depend on this CPU's bf16 units);
    the bf16 paths are tested with ``precision="bf16"`` explicitly."""
    monkeypatch.setenv("EMBRECYCLE_PRECISION", "fp32")


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 4-layer, 32-wide BERT with a small WordPiece vocabulary, saved with save_pretrained."""
    return str(save_tiny_bert(tmp_path_factory.mktemp("tiny-bert")))


@pytest.fixture(scope="session")
def other_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Same architecture and tokenizer as ``tiny_bert_dir``, different weights."""
    return str(save_tiny_bert(tmp_path_factory.mktemp("tiny-bert-other"), seed=1))


@pytest.fixture(scope="session")
def wide_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """``tiny_bert_dir`` 128 channels wide: room for groups of 64 (and 32) channels of quantised caches."""
    return str(save_tiny_bert(tmp_path_factory.mktemp("wide-bert"), hidden=128))


@pytest.fixture(scope="session")
def texts() -> list[str]:
    import random

    rng = random.Random(0)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 40))) + "." for _ in range(60)]


@pytest.fixture(scope="module")
def cluster() -> Iterator[ModuleType]:
    """A local Ray cluster for one test module (the Ray engine's tests); skipped where Ray is not installed."""
    ray = pytest.importorskip("ray")
    import ray_actors

    ray.cloudpickle.register_pickle_by_value(ray_actors)  # the misbehaving actors travel to the workers by value
    ray.init(num_cpus=2, object_store_memory=100 * 2**20, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


from toy_data import toy_classification, toy_ner  # noqa: E402  (fixtures shared by tests/training and tests/bench)

__all__ = ["toy_classification", "toy_ner"]


@pytest.fixture
def nth_append_interrupted(monkeypatch: pytest.MonkeyPatch) -> Callable[[int], AbstractContextManager[None]]:
    """``with nth_append_interrupted(2): work()``: the second ``ShardWriter.append`` of ``work`` raises
    KeyboardInterrupt (a kill between two shard writes), which the block expects; append is real again after."""
    from embrecycle.cache.shard import ShardWriter

    real = ShardWriter.append

    @contextmanager
    def interrupted(n: int) -> Iterator[None]:
        calls = {"n": 0}

        def append(self: ShardWriter, entries: list) -> int:  # type: ignore[type-arg]
            calls["n"] += 1
            if calls["n"] == n:
                raise KeyboardInterrupt
            return real(self, entries)

        monkeypatch.setattr(ShardWriter, "append", append)
        try:
            with pytest.raises(KeyboardInterrupt):
                yield
        finally:
            monkeypatch.setattr(ShardWriter, "append", real)

    return interrupted
