"""Toy labelled data on the tiny BERT's vocabulary (fixtures): the label is decided by which word a document has."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tiny_models import WORDS

FILLER = WORDS[:19]  # function words and a few others; the cue words are not among them


def _sentence(rng: random.Random, cue: str) -> list[str]:
    words = [rng.choice(FILLER) for _ in range(rng.randint(3, 10))]
    words.insert(rng.randrange(len(words) + 1), cue)
    return words


@pytest.fixture(scope="session")
def toy_classification(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    rng = random.Random(0)
    d = tmp_path_factory.mktemp("cls")
    paths = {}
    for split, n in (("train", 48), ("dev", 16)):
        rows = []
        for i in range(n):
            label = ["protein", "disease"][i % 2]
            rows.append({"text": " ".join(_sentence(rng, label)), "label": label})
        paths[split] = d / f"{split}.jsonl"
        paths[split].write_text("".join(json.dumps(r) + "\n" for r in rows))
    return paths


@pytest.fixture(scope="session")
def toy_ner(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    rng = random.Random(1)
    d = tmp_path_factory.mktemp("ner")
    paths = {}
    for split, n in (("train", 48), ("dev", 16)):
        lines = ["-DOCSTART- (1)", ""]
        for _ in range(n):
            words = _sentence(rng, "protein")
            for w in words:
                lines.append(f"{w}\tNN\tO\t{'I-Chem' if w == 'protein' else 'O'}")  # IOB1 tags
            lines.append("")
        paths[split] = d / f"{split}.conll"
        paths[split].write_text("\n".join(lines) + "\n")
    return paths
