"""Task plug-ins: label alignment to sub-words and back to words, metrics, batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from embrecycle.batching import eval_batches, train_batches
from embrecycle.data.readers import Example
from embrecycle.errors import InputDataError
from embrecycle.metrics import classification_metrics, entity_metrics
from embrecycle.tasks import ClassificationTask, NerTask
from embrecycle.tokenization import Encoded

# "Aspirin causes ulcers": [CLS] as ##pirin causes ul ##cers [SEP]
ENC = Encoded([2, 10, 11, 12, 13, 14, 3], [-1, 0, 0, 1, 2, 2, -1], [(0, 0)] * 7, truncated=False)


def test_first_subtoken_carries_the_word_label() -> None:
    task = NerTask(["O", "B-Chem", "I-Chem", "B-Dis", "I-Dis"])
    ex = Example(["Aspirin", "causes", "ulcers"], ["B-Chem", "O", "B-Dis"], "x:1")
    assert task.target(ex, ENC).tolist() == [-100, 1, -100, 0, 3, -100, -100]


def test_predictions_map_back_to_one_tag_per_word() -> None:
    task = NerTask(["O", "B-Chem", "I-Chem", "B-Dis", "I-Dis"])
    logits = torch.full((7, 5), -5.0)
    for tok, label in enumerate([0, 1, 4, 0, 3, 4, 0]):  # the second sub-token's vote is ignored
        logits[tok, label] = 5.0
    pred = task.decode(logits, ENC, ["Aspirin", "causes", "ulcers"])
    assert pred["tags"] == ["B-Chem", "O", "B-Dis"]
    assert pred["entities"] == [
        {"type": "Chem", "start": 0, "end": 1, "text": "Aspirin"},
        {"type": "Dis", "start": 2, "end": 3, "text": "ulcers"},
    ]
    # words cut off by max_length are tagged O
    short = Encoded([2, 10, 11, 3], [-1, 0, 0, -1], [(0, 0)] * 4, truncated=True)
    assert task.decode(logits[:4], short, ["Aspirin", "causes", "ulcers"])["tags"] == ["B-Chem", "O", "O"]


def test_label_vocabularies_and_unknown_labels() -> None:
    train = [Example(["a", "b"], ["B-X", "I-X"], "t:1"), Example(["c"], ["B-A"], "t:3")]
    assert NerTask.label_vocabulary(train) == ["O", "B-A", "I-A", "B-X", "I-X"]
    with pytest.raises(InputDataError, match="'B-Y'"):
        NerTask(NerTask.label_vocabulary(train)).check_labels([Example(["d"], ["B-Y"], "d:1")], "dev")
    cls = [Example("x", "pos", "t:1"), Example("y", "neg", "t:2")]
    assert ClassificationTask.label_vocabulary(cls) == ["neg", "pos"]
    with pytest.raises(InputDataError, match="at least 2 labels"):
        ClassificationTask.label_vocabulary(cls[:1])
    with pytest.raises(InputDataError, match="no label"):
        ClassificationTask.label_vocabulary([Example("x", None, "t:1"), *cls])


def test_metrics() -> None:
    m = classification_metrics(["a", "a", "b", "c"], ["a", "b", "b", "b"], ["a", "b", "c"])
    assert m["accuracy"] == 0.5
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)
    e = entity_metrics([["B-A", "I-A", "O", "B-B"]], [["B-A", "I-A", "O", "B-A"]])
    assert (e["precision"], e["recall"], e["f1"]) == (0.5, 0.5, 0.5)
    # conlleval: an I- tag after O starts an entity
    assert entity_metrics([["B-A", "I-A"]], [["I-A", "I-A"]])["f1"] == 1.0


def test_entity_metrics_agree_with_seqeval() -> None:
    seqeval = pytest.importorskip("seqeval.metrics")
    rng = np.random.default_rng(0)
    tags = ["O", "B-A", "I-A", "B-B", "I-B"]
    gold = [[tags[i] for i in rng.integers(0, 5, 12)] for _ in range(40)]
    pred = [[tags[i] for i in rng.integers(0, 5, 12)] for _ in range(40)]
    assert entity_metrics(gold, pred)["f1"] == pytest.approx(seqeval.f1_score(gold, pred))


def test_batches_are_bucketed_seeded_and_complete() -> None:
    lengths = np.random.default_rng(0).integers(5, 200, 1000)
    a = train_batches(lengths, 32, seed=1, epoch=0)
    assert sorted(np.concatenate(a).tolist()) == list(range(1000))
    assert [b.tolist() for b in a] == [b.tolist() for b in train_batches(lengths, 32, seed=1, epoch=0)]
    assert [b.tolist() for b in a] != [b.tolist() for b in train_batches(lengths, 32, seed=1, epoch=1)]
    padding = sum(lengths[b].max() * len(b) - lengths[b].sum() for b in a)
    random_padding = sum(lengths[b].max() * len(b) - lengths[b].sum() for b in np.array_split(np.arange(1000), 32))
    assert padding < random_padding / 5
    assert sorted(np.concatenate(eval_batches(lengths, 64)).tolist()) == list(range(1000))
