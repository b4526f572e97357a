"""The notes of a selection's report: why a cut was skipped, is unstable or uncertain, why none is recommended."""

from __future__ import annotations

__all__ = [
    "budget_spent",
    "no_recommendation",
    "not_learned",
    "pct",
    "uncertain",
    "unchecked_stability",
    "unstable",
]


def pct(x: float | None) -> str:
    """``0.987`` as ``98.7%``; ``-`` for no value."""
    return "-" if x is None else f"{x:.1%}"


def not_learned(sample: int, epochs: int, score: float, chance: float) -> str:
    return (
        f"the full fine-tuning proxy ({sample} examples, {epochs} epoch(s)) scored {score:.4f}, no better than "
        f"a constant prediction ({chance:.4f}): the budget is too short to learn this task, so no retention is "
        "predicted and nothing is recommended; raise --budget-minutes (or --sample / --proxy-epochs)."
    )


def budget_spent(layer: int, spent: float, budget: float) -> str:
    return f"k={layer} skipped: the budget was spent ({spent / 60:.1f} of {budget / 60:.1f} min)."


def unchecked_stability(layer: int, retention: float | None) -> str:
    return (
        f"k={layer} is unstable: the full fine-tuning reference had not learned anything half-way through the "
        f"proxies, so its final retention ({pct(retention)}) cannot be checked for stability; it is not "
        "recommended. Raise --budget-minutes for longer proxies."
    )


def unstable(layer: int, half_retention: float | None, retention: float | None, tolerance: float) -> str:
    return (
        f"k={layer} is unstable: its retention was {pct(half_retention)} half-way through the proxies and "
        f"{pct(retention)} at their end (more than {tolerance:.0%} apart), so the proxies are too short to "
        "judge it (they measure how fast each configuration learns, not where it ends); it is not "
        "recommended. Raise --budget-minutes for longer proxies."
    )


def uncertain(dev_sample: int, layers: list[int], widest: float, tolerance: float) -> str:
    return (
        f"the dev sample ({dev_sample} documents) leaves the retention of k={layers} uncertain by up to "
        f"{widest:.0%} (90% interval, paired bootstrap over dev documents), more than twice the target's margin "
        f"({tolerance:.0%}): the predictions cannot separate cuts that close; raise --dev-sample (and the budget)."
    )


def no_recommendation(target: float) -> str:
    return (
        f"no candidate is predicted to keep {target:.0%} with stable proxies: fine-tune fully, "
        "raise --budget-minutes, try lower cuts (--candidates), or lower --target-retention."
    )
