"""The selection's cost model and budget: what a proxy costs on this machine, and how large a sample fits.

A timing probe trains full fine-tuning for two short passes over real batches and gives seconds per padded
token (from the second pass: on CPU the first step of each new batch shape pays one-off costs). Planned
runs are priced by the padded tokens of the very batches the training loop will draw
(:func:`~embrecycle.batching.train_batches`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..batching import train_batches
from ..data.readers import Example, read_examples
from ..errors import ConfigError
from ..tokenization import encode_documents
from ..training import train
from .config import SelectConfig
from .proxies import proxy_config, write_samples

__all__ = ["PLAN_MARGIN", "Budget", "Costs", "measure_costs", "padded_tokens", "plan_seconds", "seconds_per_token"]

PLAN_MARGIN = 0.85
"""Share of the remaining budget the plan may use (the per-example cost comes from a few steps)."""


@dataclass
class Costs:
    """Seconds per example, measured by the timing probe."""

    train: float  # one full fine-tuning step, per example
    forward: float  # one full-model forward pass (evaluation), per document
    overhead: float  # per proxy run: loading the model, tokenizing


def plan_seconds(costs: Costs, m: int, d: int, epochs: int, ups: list[float]) -> float:
    """Predicted seconds of the reference + candidate proxies on ``m`` train / ``d`` dev examples.

    ``ups`` are the upper shares (N-k)/N of the candidates; a cache build runs the lower share.
    """
    up, low = sum(ups), sum(1 - u for u in ups)
    runs = (1 + len(ups)) * costs.overhead
    training = epochs * m * costs.train * (1 + up)
    builds = (m + d) * costs.forward * low
    evals = 2 * d * costs.forward * (1 + up)  # half-way and at the end
    return runs + training + builds + evals


def padded_tokens(lengths: np.ndarray, batch: int, seed: int, epochs: int) -> list[int]:
    """Padded tokens (examples x longest of them) of every step of a run, in order: the batches the training
    loop will draw (:func:`~embrecycle.batching.train_batches`)."""
    return [len(b) * int(lengths[b].max()) for e in range(epochs) for b in train_batches(lengths, batch, seed, e)]


def seconds_per_token(probe: Any, lengths: np.ndarray, batch: int, seed: int) -> float:
    """Seconds per padded token of a full fine-tuning step, from the probe's second pass (on CPU the first
    step of each new batch shape pays one-off costs that a real run's later epochs do not)."""
    tokens = padded_tokens(lengths, batch, seed, 2)
    half = len(tokens) // 2
    steps, tokens = probe.step_seconds[half:], tokens[half:]
    if not steps or len(steps) != len(tokens):  # a one-step probe: time what there is
        steps, tokens = probe.step_seconds, padded_tokens(lengths, batch, seed, 1)
    return sum(steps) / max(sum(tokens), 1)


def timing_probe(
    config: SelectConfig, train_ex: list[Example], out: Path, batch: int, tokenizer: Any, limit: int
) -> tuple[float, Any]:
    """Seconds per padded token of full fine-tuning steps of ``batch`` real training examples, and the probe."""
    folder = out / "proxies" / f"timing-b{batch}"
    probe_train, _, _ = write_samples(config, train_ex, [], min(len(train_ex), 4 * batch), 0, folder)
    probe = train(  # evaluated on its own training sample: no label it has not seen
        proxy_config(
            config,
            0,
            folder,
            probe_train,
            probe_train,
            out=str(folder / "run"),
            epochs=2,  # timed on the second pass: the batch shapes seen before, as in a real run's later epochs
            dev_limit=config.proxy_batch_size,
            batch_size=batch,
        ),
        progress=False,
    )
    docs = [e.doc for e in read_examples(probe_train)]
    lengths = np.array([len(e.input_ids) for e in encode_documents(tokenizer, docs, limit, "truncate", warn=False)])
    return seconds_per_token(probe, lengths, batch, config.seed), probe


def measure_costs(
    config: SelectConfig, train_ex: list[Example], train_lengths: np.ndarray, out: Path, tokenizer: Any, limit: int
) -> tuple[Costs, float]:
    """The proxies' costs and the estimated training seconds of one full fine-tuning run (as a run reports it).

    Timed at the proxies' batch size (which plans them) and at the planned run's (its steps, batched as the
    loop will batch the whole training file, give the cost of one full fine-tuning run).
    """
    n = len(train_ex)
    per_token, probe = timing_probe(config, train_ex, out, config.proxy_batch_size, tokenizer, limit)
    real_per_token = per_token
    if config.batch_size != config.proxy_batch_size:
        real_per_token, _ = timing_probe(config, train_ex, out, config.batch_size, tokenizer, limit)
    proxy_tokens = padded_tokens(train_lengths, config.proxy_batch_size, config.seed, 1)
    costs = Costs(
        train=per_token * sum(proxy_tokens) / n,
        forward=probe.eval_seconds / max(probe.dev_examples * len(probe.history), 1),
        overhead=max(probe.total_seconds - probe.train_seconds - probe.eval_seconds, 0.0),
    )
    run_tokens = sum(padded_tokens(train_lengths, config.batch_size, config.seed, config.epochs))
    return costs, real_per_token * run_tokens + costs.overhead


@dataclass
class Budget:
    """The selection's wall-clock budget and the plan of its proxies within it.

    Attributes:
        seconds: The whole budget (the timing probe included).
        costs: What the probe measured.
        started: ``time.perf_counter()`` at the start of the selection.
        ups: Upper shares (N-k)/N of the candidates.
        epochs: Epochs of each proxy.
        dev_examples: Dev examples in the user's file.
        dev_sample: The user's ``--dev-sample`` (None: ``max(m, 200)``).
    """

    seconds: float
    costs: Costs
    started: float
    ups: list[float]
    epochs: int
    dev_examples: int
    dev_sample: int | None

    def spent(self) -> float:
        return time.perf_counter() - self.started

    def dev_for(self, m: int) -> int:
        """Dev examples scored with a training sample of ``m``."""
        return min(self.dev_examples, self.dev_sample or max(m, 200))

    def cost(self, m: int) -> float:
        """Predicted seconds of every proxy on a training sample of ``m``."""
        return plan_seconds(self.costs, m, self.dev_for(m), self.epochs, self.ups)

    def choose_sample(self, n: int, sample: int | None, proxy_batch_size: int) -> int:
        """The user's ``sample`` if it fits what is left, else the largest sample whose proxies fit
        :data:`PLAN_MARGIN` of it; a :class:`ConfigError` naming the fix when none does."""
        cost = self.cost
        available = self.seconds - self.spent()
        if sample is not None:
            m = min(sample, n)
            if cost(m) > available:
                raise ConfigError(
                    f"sample={sample} needs about {cost(m) / 60:.1f} min of proxy runs but "
                    f"{max(available, 0) / 60:.1f} min of the {self.seconds / 60:.1f}-min budget are left; "
                    "raise --budget-minutes or lower --sample."
                )
            return m
        smallest = min(n, 4 * proxy_batch_size)
        if cost(smallest) > PLAN_MARGIN * available:
            raise ConfigError(
                f"budget of {self.seconds / 60:.2f} min is too small: the smallest useful selection ({smallest} "
                f"examples, {len(self.ups)} candidates) needs about "
                f"{(cost(smallest) / PLAN_MARGIN + self.spent()) / 60:.2f} min on this machine; "
                "raise --budget-minutes or pass fewer --candidates."
            )
        lo, hi = smallest, n
        while lo < hi:  # largest m with cost(m) <= margin * available
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if cost(mid) <= PLAN_MARGIN * available else (lo, mid - 1)
        return lo

    def fits(self, spent: float, m: int, d: int, up: float) -> bool:
        """Whether one more candidate (upper share ``up``) fits what is left after ``spent`` seconds."""
        return spent + plan_seconds(self.costs, m, d, self.epochs, [up]) - self.costs.overhead <= self.seconds
