"""A sweep's leaderboard: its runs grouped by setting (seeds pooled), ranked by mean dev score, as Markdown,
JSON and a plot of score against learning rate per training mode."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .files import write_text_atomic

__all__ = ["LeaderboardRow", "SweepRun", "leaderboard", "plot_sweep", "write_leaderboard"]

MARKDOWN_FILE = "leaderboard.md"
JSON_FILE = "leaderboard.json"
PLOT_FILE = "sweep.png"


@dataclass
class SweepRun:
    """One finished run of a sweep."""

    name: str
    run_dir: str
    upper: str
    lr: float
    head_lr: float
    seed: int
    score: float
    train_seconds: float
    eval_seconds: float
    cache_build_seconds: float
    examples_seen: int
    weights_bytes: int
    learned_nothing: bool
    kept: bool = False
    """Found finished in the sweep directory (an earlier, interrupted invocation trained it)."""


@dataclass
class LeaderboardRow:
    """One setting (mode, learning rates) over its seeds."""

    upper: str
    lr: float
    head_lr: float
    seeds: list[int]
    scores: list[float]
    train_seconds: float
    """Mean training time of one run (evaluation excluded)."""
    weights_bytes: int
    runs: list[str] = field(default_factory=list)
    learned_nothing: int = 0
    """Runs of this setting no better than chance."""
    best: bool = False

    @property
    def mean(self) -> float:
        return float(np.mean(self.scores))

    @property
    def std(self) -> float:
        """Sample standard deviation over seeds (0 for one seed)."""
        return float(np.std(self.scores, ddof=1)) if len(self.scores) > 1 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "mean": self.mean, "std": self.std}


def leaderboard(runs: Sequence[SweepRun]) -> list[LeaderboardRow]:
    """The runs grouped by (mode, lr, head lr), best mean dev score first; the first row is marked best."""
    groups: dict[tuple[str, float, float], list[SweepRun]] = {}
    for r in runs:
        groups.setdefault((r.upper, r.lr, r.head_lr), []).append(r)
    rows = [
        LeaderboardRow(
            upper=upper,
            lr=lr,
            head_lr=head_lr,
            seeds=[r.seed for r in rs],
            scores=[r.score for r in rs],
            train_seconds=float(np.mean([r.train_seconds for r in rs])),
            weights_bytes=max(r.weights_bytes for r in rs),
            runs=[r.run_dir for r in rs],
            learned_nothing=sum(r.learned_nothing for r in rs),
        )
        for (upper, lr, head_lr), rs in groups.items()
    ]
    rows.sort(key=lambda row: (-row.mean, row.std, row.train_seconds))
    if rows:
        rows[0].best = True
    return rows


def markdown(rows: Sequence[LeaderboardRow], metric: str, summary: str = "") -> str:
    """The leaderboard as a Markdown table (the best setting starred)."""
    show_head = any(r.head_lr != r.lr for r in rows)
    head = ["rank", "mode", "lr", *(["head lr"] if show_head else []), "seeds", f"dev {metric}", "per seed",
            "train s / run", "weights", "runs"]  # fmt: skip
    lines = ["# Sweep leaderboard", ""]
    if summary:
        lines += [summary, ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, r in enumerate(rows, 1):
        flag = f" ({r.learned_nothing} no better than chance)" if r.learned_nothing else ""
        cells = [
            f"{i}{' ★' if r.best else ''}",
            r.upper,
            f"{r.lr:g}",
            *([f"{r.head_lr:g}"] if show_head else []),
            ",".join(str(s) for s in r.seeds),
            f"{r.mean:.4f} ± {r.std:.4f}{flag}",
            ", ".join(f"{s:.4f}" for s in r.scores),
            f"{r.train_seconds:.1f}",
            f"{r.weights_bytes / 1e6:.2f} MB",
            ", ".join(f"`{Path(p).name}`" for p in r.runs),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "★ best mean dev score (ties: lower spread, then faster). Mean ± sample standard deviation over seeds.",
    ]
    return "\n".join(lines) + "\n"


def plot_sweep(rows: Sequence[LeaderboardRow], metric: str, path: Path) -> None:
    """Dev score against learning rate, one line per mode (head lr pooled by best), seeds as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for i, upper in enumerate(sorted({r.upper for r in rows})):
        best_at: dict[float, LeaderboardRow] = {}
        for r in rows:
            if r.upper == upper and (r.lr not in best_at or r.mean > best_at[r.lr].mean):
                best_at[r.lr] = r
        lrs = sorted(best_at)
        ax.errorbar(lrs, [best_at[x].mean for x in lrs], yerr=[best_at[x].std for x in lrs], fmt="o-",
                    color=f"C{i}", capsize=3, label=upper)  # fmt: skip
    best = next((r for r in rows if r.best), None)
    if best is not None:
        ax.plot([best.lr], [best.mean], marker="*", markersize=16, color="gold", markeredgecolor="k", ls="none",
                label=f"best: {best.upper}, lr {best.lr:g}")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("peak learning rate")
    ax.set_ylabel(f"dev {metric} (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_leaderboard(folder: Path, rows: Sequence[LeaderboardRow], metric: str, extra: dict[str, Any]) -> None:
    """``leaderboard.md``, ``leaderboard.json`` (rows, best, and ``extra``) and ``sweep.png`` in ``folder``."""
    summary = str(extra.get("summary", ""))
    best = next((r for r in rows if r.best), None)
    payload = {
        "metric": metric,
        "best": best.to_dict() if best else None,
        "rows": [r.to_dict() for r in rows],
        **extra,
    }
    write_text_atomic(folder / JSON_FILE, json.dumps(payload, indent=2) + "\n")
    write_text_atomic(folder / MARKDOWN_FILE, markdown(rows, metric, summary))
    if rows:
        plot_sweep(rows, metric, folder / PLOT_FILE)
