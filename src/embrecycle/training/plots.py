"""Training curves as a PNG: loss per step and the dev metric per evaluation."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def plot_curves(
    losses: Sequence[float], history: Sequence[dict[str, Any]], metric: str, path: Path, title: str = ""
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    steps = np.arange(1, len(losses) + 1)
    ax1.plot(steps, losses, color="0.75", lw=0.8, label="loss")
    if len(losses) >= 10:
        w = max(5, len(losses) // 20)
        smooth = np.convolve(losses, np.ones(w) / w, mode="valid")
        ax1.plot(steps[w - 1 :], smooth, color="C0", lw=1.6, label=f"mean of {w}")
    ax1.set_xlabel("step")
    ax1.set_ylabel("training loss")
    ax1.legend(frameon=False)
    if history:
        ax2.plot([h["step"] for h in history], [h[metric] for h in history], "o-", color="C1")
    ax2.set_xlabel("step")
    ax2.set_ylabel(f"dev {metric}")
    ax2.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
