"""The selection as a table (terminal and Markdown), a JSON file and a trade-off plot."""

from __future__ import annotations

import json
from pathlib import Path

from .notes import pct as _pct
from .results import Selection

__all__ = ["format_table", "plot_selection", "write_report"]


def _x(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def format_table(sel: Selection) -> str:
    """Markdown table: one row per cut, the reference first, the recommendation marked."""
    lines = [
        f"| k | layers cached | proxy {sel.metric} | predicted retention | proxy ratio, 90% interval | "
        "half-way | train speed-up (ceiling) | inference speed-up | cache bytes/token | cache for this corpus | |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        f"| 0 | full fine-tuning | {sel.reference['proxy_score']:.4f} | 100.0% | - | 100.0% | 1.00x | 1.00x | - | - | "
        "reference |",
    ]
    for c in sel.candidates:
        score = "-" if c.proxy_score is None else f"{c.proxy_score:.4f}"
        ceiling = "head only" if c.ceiling is None else f"{c.ceiling:.2f}x"
        size = "-" if c.corpus_cache_bytes is None else f"{c.corpus_cache_bytes / 1e6:.1f} MB"
        bpt = "-" if c.cache_bytes_per_token is None else f"{c.cache_bytes_per_token:,.0f}"
        if c.layer == sel.recommended:
            mark = "**recommended**"
        elif c.status != "measured":
            mark = c.status
        else:
            mark = "unstable" if c.stable is False else ""
        span = "-" if c.retention_interval is None else "-".join(_pct(x) for x in c.retention_interval)
        lines.append(
            f"| {c.layer} | {c.fraction:.0%} | {score} | {_pct(c.predicted_retention)} | {span} | "
            f"{_pct(c.half_retention)} | "
            f"{_x(c.train_speedup)} ({ceiling}) | {_x(c.infer_speedup)} | {bpt} | {size} | {mark} |"
        )
    return "\n".join(lines)


def plot_selection(sel: Selection, path: Path) -> None:
    """Predicted retention and measured training speed-up against k, with the target line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [c for c in sel.candidates if c.predicted_retention is not None]
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    ks = [0] + [c.layer for c in measured]
    ax.plot(ks, [100.0] + [100 * (c.predicted_retention or 0) for c in measured], "o-", color="C0", label="retention")
    spans = [c for c in measured if c.retention_interval]
    if spans:
        ax.vlines(
            [c.layer for c in spans],
            [100 * c.retention_interval[0] for c in spans],  # type: ignore[index]
            [100 * c.retention_interval[1] for c in spans],  # type: ignore[index]
            color="C0",
            alpha=0.4,
            lw=4,
            label="90% interval (dev sample)",
        )
    shaky = [c for c in measured if c.stable is False]
    if shaky:
        ax.plot(
            [c.layer for c in shaky],
            [100 * (c.predicted_retention or 0) for c in shaky],
            "o",
            mfc="white",
            color="C0",
            label="unstable (not recommended)",
        )
    ax.axhline(100 * sel.target_retention, color="C0", ls="--", lw=0.8, label=f"target {sel.target_retention:.0%}")
    if sel.recommended is not None:
        ax.axvline(sel.recommended, color="0.6", ls=":", lw=1, label=f"recommended k={sel.recommended}")
    ax.set_xlabel(f"cut k (layers cached, of {sel.num_layers})")
    ax.set_ylabel("predicted retention (%)")
    ax2 = ax.twinx()
    ax2.plot(ks, [1.0] + [c.train_speedup or 0 for c in measured], "s-", color="C1", label="train speed-up")
    ceil = [(c.layer, c.ceiling) for c in sel.candidates if c.ceiling is not None]
    if ceil:
        ax2.plot([0] + [k for k, _ in ceil], [1.0] + [v for _, v in ceil], color="C1", ls=":", lw=0.8, label="N/(N-k)")
    ax2.set_ylabel("training speed-up (x)")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, frameon=False, fontsize=8, loc="lower left")
    ax.set_title(f"{Path(sel.model.rstrip('/')).name}, {sel.task}: speed vs accuracy by cut", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(sel: Selection, out: Path) -> dict[str, Path]:
    """``selection.json``, ``selection.md`` and ``selection.png`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "selection.json", "report": out / "selection.md", "plot": out / "selection.png"}
    paths["json"].write_text(json.dumps(sel.to_dict(), indent=2) + "\n", encoding="utf-8")
    plot_selection(sel, paths["plot"])
    rec = "none" if sel.recommended is None else f"k = {sel.recommended}"
    text = [
        f"# Layer selection: {sel.model}, {sel.task}",
        "",
        f"Recommended cut: **{rec}** (target retention {sel.target_retention:.0%} of full fine-tuning's {sel.metric}).",
        "",
        f"Proxies: {sel.sample} of {sel.train_examples} training examples, {sel.dev_sample} of {sel.dev_examples} "
        f"dev examples, {sel.proxy_epochs} epoch(s). Selection took {sel.seconds / 60:.1f} min (budget "
        f"{sel.budget_seconds / 60:.1f} min; one full fine-tuning run ~{sel.estimated_full_finetune_seconds / 60:.1f} "
        f"min). Corpus: {sel.corpus_tokens:,} tokens.",
        "",
        format_table(sel),
        "",
        "![trade-off](selection.png)",
    ]
    if sel.notes:
        text += ["", "Notes:", *[f"- {n}" for n in sel.notes]]
    cmd = sel.train_command()
    if cmd:
        text += ["", "Train at the recommended cut (the cache of the sample is reused):", "", f"    {cmd}"]
    paths["report"].write_text("\n".join(text) + "\n", encoding="utf-8")
    return paths
