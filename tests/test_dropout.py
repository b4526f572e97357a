"""FastDropout: torch's dropout distribution with a cheaper mask, seeded, on every plain dropout of a model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from embrecycle.dropout import FastDropout, keep_mask, use_fast_dropout


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keep_rate_and_scale(p: float) -> None:
    torch.manual_seed(0)
    x = torch.ones(400, 1000)
    y = FastDropout(p).train()(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - (1 - p)) < 0.005
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / (1 - p)))


def test_seeded_and_shapes() -> None:
    torch.manual_seed(3)
    a = keep_mask(torch.Size([7, 5, 3]), 0.1)
    torch.manual_seed(3)
    b = keep_mask(torch.Size([7, 5, 3]), 0.1)
    assert a.shape == (7, 5, 3) and a.dtype == torch.bool and torch.equal(a, b)
    assert keep_mask(torch.Size([0, 4]), 0.1).shape == (0, 4)


def test_eval_and_edge_probabilities_are_torch_semantics() -> None:
    x = torch.randn(16, 8)
    assert torch.equal(FastDropout(0.3).eval()(x), x)
    assert torch.equal(FastDropout(0.0).train()(x), x)
    assert torch.count_nonzero(FastDropout(1.0).train()(x)) == 0


def test_gradient_flows_through_kept_elements_only() -> None:
    torch.manual_seed(1)
    x = torch.randn(64, 32, dtype=torch.bfloat16, requires_grad=True)
    y = FastDropout(0.25).train()(x)
    assert y.dtype == torch.bfloat16
    y.sum().backward()
    assert x.grad is not None
    kept = y.detach() != 0
    assert torch.allclose(x.grad.float()[kept], torch.full_like(x.grad.float()[kept], 1 / 0.75), atol=1e-2)
    assert torch.count_nonzero(x.grad[~kept & (x.detach() != 0)]) == 0


def test_every_plain_dropout_is_swapped_keeping_p_and_mode() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.2), nn.Sequential(nn.Dropout(0.4), nn.Linear(4, 2)))
    model.eval()
    assert use_fast_dropout(model) == 2
    drops = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert [type(m) for m in drops] == [FastDropout, FastDropout]
    assert [m.p for m in drops] == [0.2, 0.4] and not any(m.training for m in drops)
    assert use_fast_dropout(model) == 0  # already swapped
