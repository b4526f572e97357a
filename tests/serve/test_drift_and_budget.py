"""The drift signal's divergence and the token budget of a batch, without a server."""

from __future__ import annotations

import math

import numpy as np
import pytest

from embrecycle.batching import eval_batches
from embrecycle.serve.drift import DriftMonitor, js_divergence


def test_js_divergence_bounds_and_a_hand_computed_value() -> None:
    assert js_divergence({"a": 3, "b": 1}, {"a": 0.75, "b": 0.25}) == pytest.approx(0.0)
    assert js_divergence({"a": 1}, {"b": 1}) == pytest.approx(1.0)
    # p = (1, 0), q = (1/2, 1/2): m = (3/4, 1/4); JS = (KL(p||m) + KL(q||m)) / 2
    kl_p = math.log2(1 / 0.75)
    kl_q = 0.5 * math.log2(0.5 / 0.75) + 0.5 * math.log2(0.5 / 0.25)
    assert js_divergence({"a": 1}, {"a": 1, "b": 1}) == pytest.approx((kl_p + kl_q) / 2)
    with pytest.raises(ValueError, match="mass"):
        js_divergence({}, {"a": 1})


def test_drift_window_slides() -> None:
    m = DriftMonitor({"pos": 5, "neg": 5}, window=4)
    assert m.divergence() is None
    m.observe(["pos", "pos", "pos", "pos"])
    assert m.predicted_shares() == {"pos": 1.0} and m.divergence() == pytest.approx(0.311, abs=1e-3)
    m.observe(["neg", "neg"])  # the two oldest leave the window
    assert m.predicted_shares() == {"neg": 0.5, "pos": 0.5} and m.divergence() == pytest.approx(0.0)
    assert m.summary()["observed"] == 4 and m.summary()["training"] == {"neg": 0.5, "pos": 0.5}
    assert DriftMonitor({}, 4).summary()["js_divergence_bits"] is None  # a run without training counts


def test_eval_batches_keep_to_the_token_budget() -> None:
    lengths = np.array([10, 50, 12, 30, 100, 11, 49, 200])
    batches = eval_batches(lengths, batch_size=3, max_tokens=100)
    assert sorted(int(i) for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        padded = len(b) * int(lengths[b].max())
        assert len(b) <= 3 and (padded <= 100 or len(b) == 1), (b, padded)
    assert [len(b) for b in batches] == [3, 2, 1, 1, 1]  # 10,11,12 | 30,49 (98 padded) | 50 | 100 | 200
    assert [list(b) for b in eval_batches(lengths, 3)] == [list(b) for b in eval_batches(lengths, 3, None)]
