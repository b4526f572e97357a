"""Length-bucketed batches: little padding, yet a different shuffled order every epoch."""

from __future__ import annotations

import numpy as np

BUCKET_BATCHES = 50  # batches per bucket: sort within, shuffle across


def train_batches(lengths: np.ndarray, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """Shuffled batches of example indices, each drawn from examples of similar length.

    The same ``(seed, epoch)`` gives the same batches, so recycled and full
    fine-tuning runs see identical batches.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    batches: list[np.ndarray] = []
    chunk = batch_size * BUCKET_BATCHES
    for start in range(0, len(order), chunk):
        part = order[start : start + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches.extend(part[i : i + batch_size] for i in range(0, len(part), batch_size))
    rng.shuffle(batches)
    return batches


def eval_batches(lengths: np.ndarray, batch_size: int, max_tokens: int | None = None) -> list[np.ndarray]:
    """Batches of examples sorted by length (order restored by the caller).

    With ``max_tokens``, a batch also stops growing before its padded size (documents x longest length) would
    exceed it; a document longer than the budget gets a batch of its own.
    """
    order = np.argsort(lengths, kind="stable")
    if max_tokens is None:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    batches: list[np.ndarray] = []
    start = 0
    for end in range(1, len(order) + 1):
        size = end - start
        if end == len(order) or size >= batch_size or (size + 1) * int(lengths[order[end]]) > max_tokens:
            batches.append(order[start:end])
            start = end
    return batches
