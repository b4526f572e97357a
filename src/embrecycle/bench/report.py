"""Turn benchmark rows into a Markdown report, plots and the README's headline table."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from .config import METHODS, dataset_names
from .tables import fmt as _fmt
from .tables import markdown_table, replace_block

__all__ = [
    "chosen_lrs",
    "headline_table",
    "merge_results",
    "readme_block",
    "render_report",
    "retention_interval",
    "summarize",
    "update_readme",
]

README_START = "<!-- bench:start -->"
README_END = "<!-- bench:end -->"
AMORTISE_RUNS = (1, 3, 10)
REFERENCE = "full-finetune"
"""The method every ratio is against."""
SCORE_FLOOR = 0.3
"""Rows kept without a chance level (older results): below this full-fine-tuning test score a retention ratio
says nothing (a model at chance, or no entity found)."""
CLEARLY = 0.05
"""A reference whose dev score is less than this above chance (constant prediction or shuffled predictions) is
near chance: a ratio to it says nothing."""
T95 = dict(
    enumerate(
        [
            *(6.314, 2.920, 2.353, 2.132, 2.015, 1.943, 1.895, 1.860, 1.833, 1.812, 1.796, 1.782, 1.771, 1.761),
            *(1.753, 1.746, 1.740, 1.734, 1.729, 1.725, 1.721, 1.717, 1.714, 1.711, 1.708, 1.706, 1.703, 1.701),
            *(1.699, 1.697),
        ],
        start=1,
    )
)
"""One-sided 95% quantiles of Student's t by degrees of freedom, 1-30 (two-sided 90% intervals; beyond: 1.645)."""


def chosen_lrs(rows: list[dict[str, Any]]) -> dict[tuple[str, str, str], float]:
    """The learning rate each (model, dataset, method) is reported at: its best first-seed run by dev score.

    Without a sweep every run has the one rate. Ties go to the rate nearer the method's default.
    """
    first: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r["kind"] == "train":
            first[(r["model"], r["dataset"], r["method"])].append(r)
    chosen = {}
    for key, rs in first.items():
        seed = min(r["seed"] for r in rs)
        at_first = [r for r in rs if r["seed"] == seed]
        best = max(
            at_first,
            key=lambda r: (r["dev_score"], -abs(math.log(r["lr"] / r.get("default_lr", r["lr"])))),
        )
        chosen[key] = best["lr"]
    return chosen


def retention_interval(
    method: list[float], reference: list[float], level_t: dict[int, float] = T95
) -> tuple[float, float, float] | None:
    """Retention (mean score over the reference's mean score) with a two-sided 90% interval over seeds.

    The interval is the delta method's for a ratio of two independent means, with Student's t at the smaller
    sample's degrees of freedom; None when the reference mean is not positive. With one seed each the interval
    is the point.

    Example:
        >>> r, lo, hi = retention_interval([0.80, 0.82, 0.81], [0.82, 0.83, 0.84])
        >>> f"{r:.3f} [{lo:.3f}, {hi:.3f}]"
        '0.976 [0.948, 1.004]'
    """
    m, ref = np.asarray(method, float), np.asarray(reference, float)
    if ref.mean() <= 0 or not len(m):
        return None
    ratio = float(m.mean() / ref.mean())
    df = min(len(m), len(ref)) - 1
    if df < 1:
        return ratio, ratio, ratio
    var = m.var(ddof=1) / len(m) / m.mean() ** 2 if m.mean() else 0.0
    var += ref.var(ddof=1) / len(ref) / ref.mean() ** 2
    half = level_t.get(df, 1.645) * abs(ratio) * math.sqrt(var)
    return ratio, ratio - half, ratio + half


def _near_chance(rows: list[dict[str, Any]]) -> bool | None:
    """The runs' dev scores are within :data:`CLEARLY` of chance on average (None: no chance level kept)."""
    margins = [
        r["dev_score"] - max(r["dev_constant_score"], r["dev_chance_score"])
        for r in rows
        if r.get("dev_chance_score") is not None and r.get("dev_constant_score") is not None
    ]
    if not margins:
        return None
    return float(np.mean(margins)) < CLEARLY


def _reference(summary: list[dict[str, Any]], s: dict[str, Any]) -> dict[str, Any] | None:
    """Full fine-tuning's summary row for the model and dataset of ``s``."""
    key = (s["model"], s["dataset"], REFERENCE)
    return next((x for x in summary if (x["model"], x["dataset"], x["method"]) == key), None)


def _is_layer_cut(method: str) -> bool:
    """A recycling method that trains the full upper layers at a cut below N (recycle-25/50/75)."""
    m = METHODS.get(method)
    return m is not None and m.is_layer_cut


def _mean_std(xs: list[float]) -> tuple[float, float]:
    a = np.asarray(xs, dtype=float)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (model, dataset, method): means (and std of the scores) over seeds, ratios to full fine-tuning."""
    chosen = chosen_lrs(rows)
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    tried: dict[tuple[str, str, str], list[tuple[float, float]]] = defaultdict(list)
    train_rows = [r for r in rows if r["kind"] == "train"]
    first_seed: dict[tuple[str, str, str], int] = {}
    for r in train_rows:
        key = (r["model"], r["dataset"], r["method"])
        first_seed[key] = min(first_seed.get(key, r["seed"]), r["seed"])
    for r in train_rows:
        key = (r["model"], r["dataset"], r["method"])
        if r["lr"] == chosen[key]:
            groups[key].append(r)
        if r["seed"] == first_seed[key]:
            tried[key].append((r["lr"], r["dev_score"]))
    out = []
    for (model, dataset, method), rs in groups.items():
        dev, dev_sd = _mean_std([r["dev_score"] for r in rs])
        test, test_sd = _mean_std([r["test_score"] for r in rs])
        r0 = rs[0]
        n, k = r0["num_layers"], r0["layer"]
        out.append(
            {
                "model": model,
                "dataset": dataset,
                "metric": r0["metric"],
                "method": method,
                "layer": k,
                "num_layers": n,
                "seeds": len(rs),
                "lr": chosen[(model, dataset, method)],
                "head_lr": rs[0].get("head_lr"),
                "lrs_tried": sorted(tried[(model, dataset, method)]),
                "test_scores": [r["test_score"] for r in sorted(rs, key=lambda r: r["seed"])],
                "near_chance": _near_chance(rs),
                "dev": dev,
                "dev_std": dev_sd,
                "test": test,
                "test_std": test_sd,
                # Medians: one slow spell of the shared machine must not move a method's speed.
                "train_seconds": float(np.median([r["train_seconds"] for r in rs])),
                "train_eps": float(np.median([r["train_examples_per_second"] for r in rs])),
                "infer_cached_dps": float(np.median([r["infer_cached_docs_per_second"] for r in rs])),
                "infer_new_dps": float(np.median([r["infer_new_docs_per_second"] for r in rs])),
                "peak_memory_mb": max(r["peak_memory_bytes"] for r in rs) / 1e6 or None,
                "idle_memory_mb": max(r.get("idle_memory_bytes", 0) for r in rs) / 1e6 or None,
                "trainable_parameters": r0["trainable_parameters"],
                "run_mb": r0["run_weights_bytes"] / 1e6,
                "read_fraction": float(np.mean([r["read_fraction"] for r in rs])),
                # the first seed builds the cache, the later ones find it: the build is the largest
                "cache_build_seconds": float(max(r["cache_build_seconds"] for r in rs)),
                "ceiling": n / (n - k) if r0["baseline"] is None and k < n else None,
            }
        )
    for s in out:
        ref = _reference(out, s)
        ref_runs = groups.get((s["model"], s["dataset"], REFERENCE), [])
        runs = groups[(s["model"], s["dataset"], s["method"])]
        s["train_speedup"], s["speedup_basis"] = _matched_ratio(runs, ref_runs, "train_examples_per_second")
        s["infer_cached_speedup"], _ = _matched_ratio(runs, ref_runs, "infer_cached_docs_per_second")
        s["matched_train_seconds"] = _matched_seconds(runs, ref_runs)
        interval = retention_interval(s["test_scores"], ref["test_scores"]) if ref else None
        s["retention"] = interval[0] if interval else None
        s["retention_low"], s["retention_high"] = (interval[1], interval[2]) if interval else (None, None)
        s["reference_near_chance"] = _reference_useless(ref)
        s["dev_retention"] = s["dev"] / ref["dev"] if ref and ref["dev"] else None
    order = {m: i for i, m in enumerate(METHODS)}
    return sorted(out, key=lambda s: (s["model"], s["dataset"], order.get(s["method"], 99)))


def _run_setting(r: dict[str, Any]) -> tuple[str, str, int, str]:
    """What a run's speed depends on besides the method: device, precision, thread count and processor.

    Rows kept before runs recorded their processor carry none (``""``): those match each other.
    """
    return (
        str(r.get("device", "cpu")),
        str(r.get("precision", "fp32")),
        int(r.get("threads") or 0),
        str(r.get("cpu") or ""),
    )


def _matched_medians(
    runs: list[dict[str, Any]], ref_runs: list[dict[str, Any]], field: str
) -> dict[tuple[str, str, int, str], tuple[float, float, int]]:
    """Per setting that both a method and the reference ran at: the two medians of ``field`` and the run count."""
    by: dict[tuple[str, str, int, str], tuple[list[float], list[float]]] = defaultdict(lambda: ([], []))
    for r in runs:
        by[_run_setting(r)][0].append(float(r[field]))
    for r in ref_runs:
        by[_run_setting(r)][1].append(float(r[field]))
    return {k: (float(np.median(a)), float(np.median(b)), len(a) + len(b)) for k, (a, b) in by.items() if a and b}


def _basis(settings: list[tuple[str, str, int, str]]) -> str:
    return ", ".join(f"{p} {d}" for d, p, _, _ in sorted(settings))


def _matched_ratio(runs: list[dict[str, Any]], ref_runs: list[dict[str, Any]], field: str) -> tuple[float | None, str]:
    """A method's speed over the reference's, comparing only runs made at one device, precision, thread count
    and processor.

    Seeds of one benchmark may run on different machines (a resumed run): a bf16 run of one method over an
    fp32 run of another measures the precision, not the method. Per setting that both have, the ratio of the
    medians; the figure is the median of those ratios. Returns ``(ratio, basis)``, where the basis names the
    settings compared, or says ``"mixed settings"`` when no setting has both (ratio of the overall medians).
    """
    if not runs or not ref_runs:
        return None, "no reference"
    matched = {k: a / b for k, (a, b, _) in _matched_medians(runs, ref_runs, field).items() if b > 0}
    if matched:
        return float(np.median(list(matched.values()))), _basis(list(matched))
    ref = float(np.median([r[field] for r in ref_runs]))
    return (float(np.median([r[field] for r in runs])) / ref if ref > 0 else None), "mixed settings"


def _matched_seconds(runs: list[dict[str, Any]], ref_runs: list[dict[str, Any]]) -> tuple[float, float, str] | None:
    """Median training seconds of a method and of the reference at the one setting where both ran most.

    ``None`` when they share no setting: then their times measure the machines, not the methods.
    """
    matched = _matched_medians(runs, ref_runs, "train_seconds")
    if not matched:
        return None
    key = max(matched, key=lambda k: (matched[k][2], k))
    t_rec, t_full, _ = matched[key]
    return t_rec, t_full, _basis([key])


def _reference_useless(ref: dict[str, Any] | None) -> bool:
    """Full fine-tuning is missing or near chance: a ratio to it says nothing."""
    if ref is None:
        return True
    if ref["near_chance"] is None:
        return bool(ref["test"] < SCORE_FLOOR)
    return bool(ref["near_chance"])


def _retention_cell(s: dict[str, Any]) -> str:
    """Retention with its 90% interval, or why there is none."""
    if s["method"] == REFERENCE:
        return "(reference)"
    if s["reference_near_chance"]:
        return "n/a: reference near chance"
    if s["retention"] is None:
        return "-"
    if s["seeds"] > 1 and s["retention_low"] is not None:
        return f"{s['retention']:.1%} [{s['retention_low']:.1%}, {s['retention_high']:.1%}]"
    return f"{s['retention']:.1%}"


def _mean_cell(mean: float, std: float, seeds: int) -> str:
    """``mean ± std`` over seeds; one seed has no spread, so it says so instead of printing ``± 0.0000``."""
    return f"{mean:.4f} ± {std:.4f}" if seeds > 1 else f"{mean:.4f} (1 seed)"


def headline_table(summary: list[dict[str, Any]]) -> str:
    """Test score, retention and speed-ups per (model, dataset, method)."""
    header = ["model", "dataset", "method", "k/N", "lr", "test score (mean ± std)", "retention [90% interval]"]
    header += ["train speed-up (ceiling)", "inference on cached docs", "trainable params"]
    rows = []
    for s in summary:
        ceiling = f" ({s['ceiling']:.2f}x)" if s["ceiling"] else ""
        mixed = " (precisions differ)" if s.get("speedup_basis") == "mixed settings" else ""
        method = METHODS.get(s["method"])
        kn = f"{s['layer']}/{s['num_layers']}" if method is None or method.recycles else "-"
        rows.append(
            [
                s["model"],
                s["dataset"],
                s["method"],
                kn,
                f"{s['lr']:g}",
                _mean_cell(s["test"], s["test_std"], s["seeds"]) + (" (near chance)" if s["near_chance"] else ""),
                _retention_cell(s),
                _fmt(s["train_speedup"], ".2f", "x") + ceiling + mixed,
                _fmt(s["infer_cached_speedup"], ".2f", "x") + mixed,
                f"{s['trainable_parameters']:,}",
            ]
        )
    return "\n".join(markdown_table(header, rows))


def _amortisation(summary: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for s in summary:
        if s["method"] != "recycle-50":
            continue
        matched = s.get("matched_train_seconds")
        if matched is None:
            # no full fine-tuning runs, or none at a setting recycling ran at: a time saved across machines
            # is not a saving
            continue
        build, (t_rec, t_full, basis) = s["cache_build_seconds"], matched
        saving = t_full - t_rec
        out.append(
            {
                "model": s["model"],
                "dataset": s["dataset"],
                "build": build,
                "recycle": [build + n * t_rec for n in AMORTISE_RUNS],
                "full": [n * t_full for n in AMORTISE_RUNS],
                "per_run": (t_rec, t_full),
                "basis": basis,
                "crossover": math.ceil(build / saving) if saving > 0 else None,
            }
        )
    return out


def _targets(summary: list[dict[str, Any]], caches: list[dict[str, Any]]) -> list[str]:
    rows: list[list[str]] = []

    def add(name: str, s: dict[str, Any], value: float | None, ok: bool | str | None, spec: str) -> None:
        verdict = ok if isinstance(ok, str) else ("yes" if ok else "no")
        rows.append([name, s["model"], s["dataset"], _fmt(value, spec), verdict])

    def retention_verdict(s: dict[str, Any], need: float) -> bool | str:
        ref = _reference(summary, s)
        if ref is None or s["reference_near_chance"]:
            shown = "n/a" if ref is None else f"{ref['test']:.3f}"
            return f"not measurable (full fine-tuning scored {shown}, near chance)"
        ret, low, high = s["retention"], s["retention_low"], s["retention_high"]
        if ret is None:
            return False
        if s["seeds"] > 1 and low is not None and high is not None:
            span = f"90% interval [{low:.1%}, {high:.1%}]"
            if ret >= need:
                return f"yes ({span}{'; it reaches below' if low < need else ''})"
            return f"no ({span}{'; it reaches the target' if high >= need else ''})"
        return ret >= need

    for s in summary:
        sp = s["train_speedup"]
        if s["method"] == "recycle-50" and sp is not None:
            need = 1.85 if s["num_layers"] >= 12 else 1.8
            add(f"train speed-up at 50% >= {need}x", s, sp, sp >= need, ".2f")
            ret = s["retention"]
            need_ret = 0.98 if s["metric"] == "f1" else 0.99
            add(f"test retention at 50% >= {need_ret:.0%}", s, ret, retention_verdict(s, need_ret), ".1%")
            inf = s["infer_cached_speedup"]
            add("inference on cached docs at 50% >= 1.85x", s, inf, inf is not None and inf >= 1.85, ".2f")
        if s["method"] == "recycle-75" and sp is not None and s["ceiling"] and s["ceiling"] >= 3.5:
            add("train speed-up at 75% >= 3.5x", s, sp, sp >= 3.5, ".2f")  # (a 6-layer model's 75% is k = 4: 3x)
        if _is_layer_cut(s["method"]) and sp is not None and s["ceiling"]:
            frac = sp / s["ceiling"]
            add(f"{s['method']} within 10% of N/(N-k) = {s['ceiling']:.2f}x", s, frac, frac >= 0.9, ".1%")
        if s["method"] == "recycle-50-lora" and s["retention"] is not None:
            need_ret = 0.98 if s["metric"] == "f1" else 0.99
            ret = s["retention"]
            add(f"recycle + LoRA at 50% retention >= {need_ret:.0%}", s, ret, retention_verdict(s, need_ret), ".1%")
    for c in caches:
        frac = c["read_fraction_of_training"]
        verdict = "yes" if frac < 0.05 else "no"
        if c["layer"] == c["num_layers"]:
            verdict += " (k = N: the step is the head alone, so reading dominates; not a recycling cut)"
        name = f"cache read < 5% of a training step (k = {c['layer']})"
        rows.append([name, c["model"], c["dataset"], f"{frac:.2%}", verdict])
    return markdown_table(["target", "model", "dataset", "measured", "met"], rows)


def _plots(summary: list[dict[str, Any]], amort: list[dict[str, Any]], out: Path, stem: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    pairs = sorted({(s["model"], s["dataset"]) for s in summary})
    fig, axes = plt.subplots(1, len(pairs), figsize=(4.2 * len(pairs), 3.6), squeeze=False)
    for ax, (model, dataset) in zip(axes[0], pairs, strict=True):
        for s in [x for x in summary if (x["model"], x["dataset"]) == (model, dataset)]:
            ax.errorbar(s["train_seconds"], s["test"], yerr=s["test_std"], fmt="o", capsize=3)
            ax.annotate(
                s["method"], (s["train_seconds"], s["test"]), fontsize=7, xytext=(3, 3), textcoords="offset points"
            )
        ax.set_title(f"{model} / {dataset}", fontsize=9)
        ax.set_xlabel("training wall time (s)")
        ax.set_ylabel("test score")
        ax.grid(alpha=0.3)
    names.append(_save(plt, fig, out / f"{stem}_accuracy_vs_time.png"))

    if amort:
        fig, axes = plt.subplots(1, len(amort), figsize=(4.2 * len(amort), 3.4), squeeze=False)
        runs = np.arange(0, 11)
        for ax, a in zip(axes[0], amort, strict=True):
            t_rec, t_full = a["per_run"]
            ax.plot(runs, a["build"] + runs * t_rec, label="recycle 50% (cache build included)")
            ax.plot(runs, runs * t_full, label="full fine-tuning")
            ax.set_title(f"{a['model']} / {a['dataset']}", fontsize=9)
            ax.set_xlabel("training runs over the corpus")
            ax.set_ylabel("cumulative wall time (s)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        names.append(_save(plt, fig, out / f"{stem}_amortisation.png"))

    rec = [s for s in summary if _is_layer_cut(s["method"]) and s["train_speedup"]]
    if rec:
        fig, ax = plt.subplots(figsize=(5.2, 3.8))
        for key in sorted({(s["model"], s["dataset"]) for s in rec}):
            pts = sorted(
                (s["layer"] / s["num_layers"], s["train_speedup"]) for s in rec if (s["model"], s["dataset"]) == key
            )
            ax.plot(*zip(*pts, strict=True), marker="o", label=" / ".join(key))
        f = np.linspace(0, 0.8, 50)
        ax.plot(f, 1 / (1 - f), "k--", label="ceiling N/(N-k)")
        ax.set_xlabel("fraction of layers cached (k/N)")
        ax.set_ylabel("training speed-up vs full fine-tuning")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        names.append(_save(plt, fig, out / f"{stem}_speedup_vs_layer.png"))
    return names


def _save(plt: Any, fig: Any, path: Path) -> str:
    """Write a figure as PNG, close it, return its file name."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def render_report(result: dict[str, Any], out: Path, stem: str) -> str:
    """The Markdown report (plots written next to it); returns its text."""
    rows = result["rows"]
    parts = result.get("parts") or [{"environment": result["environment"], "config": result["config"]}]
    summary = summarize(rows)
    caches = [r for r in rows if r["kind"] == "cache"]
    amort = _amortisation(summary)
    plots = _plots(summary, amort, out, stem)
    quick = any(p["config"]["quick"] for p in parts)
    lines = [
        "# embrecycle benchmark" + (" (quick smoke run: tiny subsets, numbers meaningless)" if quick else ""),
        "",
        *[_part_lines(p, len(parts)) for p in parts],
        *_compute_lines(rows),
        "Within each run everything was measured in one process, side by side, every seed running every method in "
        "turn after an unrecorded warm-up; absolute times only compare within one run (the machine is shared and "
        "noisy), ratios are what to read.",
        "",
        "Every method shares the head, loop, optimiser (AdamW, linear warm-up and decay), schedule, epochs, batches "
        "and seeds; each trains at its mode's default learning rate or, with a sweep, at the best rate of its first "
        "seed (listed at the end). Scores: macro-F1 (classification) and entity F1 (NER) of the best dev "
        "checkpoint on the test subset; retention (with a 90% interval over seeds: delta method, Student's t) "
        "and speed-ups are against full fine-tuning of the same model and dataset; a reference within "
        f"{CLEARLY} of chance on dev (the constant prediction, or its own predictions shuffled) gets no ratio. "
        "Training throughput excludes evaluation and the one-off cache build (accounted for in "
        "the amortisation table). Inference on cached documents: the dev subset, in the cache; on new documents: "
        "the test subset, not in the cache (its lower layers run).",
        "",
        *_data_lines(rows),
        "## Results",
        "",
        headline_table(summary),
        "",
        "## Targets",
        "",
        *_targets(summary, caches),
        "",
        "## Every figure per method",
        "",
        *_per_method_table(summary),
        "",
        "Speeds are medians over seeds. A speed-up compares only runs made at one device, precision and thread "
        "count (the ratio of their medians; the median of those ratios where seeds ran at several). "
        "Peak memory: the kernel's resident-set high-water mark of a fresh process "
        "training the method for two batches (after a first pass that built its cache and loaded every library; "
        "Python, torch and the tokenizer included), first seed only.",
        "",
        "## Caches",
        "",
        *_caches_table(caches),
        "",
        "## Amortisation: cumulative wall time over repeated runs on one corpus",
        "",
        "Recycling pays its cache build once; each later run (a sweep point, another task) only trains. "
        "Cumulative training time, cache build included, for recycling at 50% against full fine-tuning:",
        "",
        *_amortisation_table(amort),
        "",
        *[f"![{p}]({p})" for p in plots],
        "",
        "## Learning rates",
        "",
        "Each method's rate: its mode's default, or with a sweep (`--lr-steps`) the best first-seed run by dev "
        "score, marked *; the later seeds trained at it. Dev scores of the first seed per rate tried:",
        "",
        *_lr_table(summary),
        "",
    ]
    return "\n".join(lines)


def _lr_table(summary: list[dict[str, Any]]) -> list[str]:
    rows = []
    for s in summary:
        tried = ", ".join(
            f"{lr:g}: {dev:.4f}{'*' if lr == s['lr'] and len(s['lrs_tried']) > 1 else ''}" for lr, dev in s["lrs_tried"]
        )
        head = f"{s['head_lr']:g}" if s.get("head_lr") is not None else "-"
        rows.append([s["model"], s["dataset"], s["method"], f"{s['lr']:g}", head, tried])
    return markdown_table(["model", "dataset", "method", "lr", "head lr", "first seed's dev score per lr"], rows)


def _per_method_table(summary: list[dict[str, Any]]) -> list[str]:
    header = ["model", "dataset", "method", "dev (mean ± std)", "test (mean ± std)", "train ex/s", "train wall (s)"]
    header += ["infer cached docs/s", "infer new docs/s", "peak memory (MB)", "of which before training (MB)"]
    header += ["trainable params", "run size (MB)"]
    rows = [
        [
            s["model"],
            s["dataset"],
            s["method"],
            _mean_cell(s["dev"], s["dev_std"], s["seeds"]),
            _mean_cell(s["test"], s["test_std"], s["seeds"]),
            f"{s['train_eps']:.1f}",
            f"{s['train_seconds']:.1f}",
            f"{s['infer_cached_dps']:.1f}",
            f"{s['infer_new_dps']:.1f}",
            _fmt(s["peak_memory_mb"], ".0f"),
            _fmt(s["idle_memory_mb"], ".0f"),
            f"{s['trainable_parameters']:,}",
            f"{s['run_mb']:.2f}",
        ]
        for s in summary
    ]
    return markdown_table(header, rows)


def _caches_table(caches: list[dict[str, Any]]) -> list[str]:
    header = ["model", "dataset", "k/N", "build (s)", "documents", "tokens", "bytes/token", "total (MB)"]
    header += ["read docs/s", "read share of training"]
    rows = [
        [
            c["model"],
            c["dataset"],
            f"{c['layer']}/{c['num_layers']}",
            f"{c['build_seconds']:.1f}",
            c["documents"],
            c["tokens"],
            c["bytes_per_token"],
            f"{c['bytes'] / 1e6:.1f}",
            f"{c['read_docs_per_second']:.0f}",
            f"{c['read_fraction_of_training']:.2%}",
        ]
        for c in caches
    ]
    return markdown_table(header, rows)


def _amortisation_table(amort: list[dict[str, Any]]) -> list[str]:
    header = ["model", "dataset", "cache build (s)"]
    header += [f"{n} run{'s' if n > 1 else ''}: recycle / full (s)" for n in AMORTISE_RUNS]
    header += ["recycling cheaper from run", "timed at"]
    rows = [
        [
            a["model"],
            a["dataset"],
            f"{a['build']:.1f}",
            *(f"{r:.0f} / {f:.0f}" for r, f in zip(a["recycle"], a["full"], strict=True)),
            a["crossover"] if a["crossover"] else "never",
            a["basis"],
        ]
        for a in amort
    ]
    return markdown_table(header, rows)


def _data_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The subsets each dataset was run on, with the dev/test examples left out for unseen labels."""
    data = [r for r in rows if r["kind"] == "data"]
    if not data:
        return []
    lines = [
        "Subsets (seeded, the same for every method and seed; dev and test examples whose class never occurs in "
        "the training subset are left out, a model cannot predict them):",
        "",
    ]
    header = ["model", "dataset", "train", "dev", "test", "classes in train", "dev / test left out"]
    table = [
        [
            d["model"],
            d["dataset"],
            d["train"],
            d["dev"],
            d["test"],
            d["labels"] if d["labels"] is not None else "(NER)",
            f"{d['dev_left_out']} / {d['test_left_out']}",
        ]
        for d in data
    ]
    return [*lines, *markdown_table(header, table), ""]


def _compute_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The machine time the kept runs took, summed (a resumed benchmark's own clock misses the earlier parts)."""
    runs = [r for r in rows if r["kind"] == "train" and "run_wall_seconds" in r]
    if not runs:
        return []
    by_model: dict[str, float] = defaultdict(float)
    for r in runs:
        by_model[r["model"]] += r["run_wall_seconds"]
    total = sum(by_model.values())
    each = ", ".join(f"{m} {t / 3600:.1f} h" for m, t in sorted(by_model.items()))
    return [
        f"Machine time of the {len(runs)} training runs (training, evaluation, cache builds, inference timing), "
        f"summed over every session that made them: {total / 3600:.1f} h ({each}).",
        "",
    ]


def _part_lines(part: dict[str, Any], n_parts: int) -> str:
    """Machine and setup of one benchmark run."""
    env, cfg = part["environment"], part["config"]
    limits = ", ".join(
        f"{k.split('_')[0]} {cfg[k] if cfg[k] else 'all'}" for k in ("train_limit", "dev_limit", "test_limit")
    )
    if cfg.get("limits"):
        limits += f" ({', '.join(cfg['limits'])})"
    sweep = (
        f"; learning rates swept {cfg['lr_steps']} rung(s) either side of each default on the first seed"
        if cfg.get("lr_steps")
        else ""
    )
    head = f"Run of models {cfg['models']}: " if n_parts > 1 else ""
    return (
        f"{head}machine {env['machine']}, {env['cpus']} CPUs ({env['threads']} torch threads), "
        f"{env['memory_gb']} GB; Python {env['python']}, torch {env['torch']}, transformers {env['transformers']}, "
        f"embrecycle {env['embrecycle']}; {env['date']}; took {env.get('bench_seconds', 0) / 60:.1f} min. "
        f"Datasets {dataset_names(cfg['datasets'])} (seeded subsets: {limits} examples); {cfg['epochs']} epochs, batch "
        f"{cfg['batch_size']}, max length {cfg['max_length']}; seeds {cfg['seeds']}{sweep}.\n"
    )


def merge_results(results: list[dict[str, Any]]) -> dict[str, Any]:
    """One result from several benchmark runs (for example one per model, each with its own subsets).

    Ratios stay within one run: every (model, dataset) must come from exactly one of them.
    """
    from ..errors import ConfigError

    seen: dict[tuple[str, str], int] = {}
    parts, rows = [], []
    for i, result in enumerate(results):
        for p in result.get("parts") or [{"environment": result["environment"], "config": result["config"]}]:
            parts.append(p)
        for r in result["rows"]:
            key = (r["model"], r["dataset"])
            if seen.setdefault(key, i) != i:
                raise ConfigError(
                    f"{key[0]} / {key[1]} is in results {seen[key] + 1} and {i + 1}: its ratios would mix two "
                    "runs. Merge results that cover different (model, dataset) pairs."
                )
            rows.append(r)
    return {"parts": parts, "rows": rows}


def readme_block(rows: list[dict[str, Any]]) -> str:
    """What the README shows between its benchmark markers: the headline table and the machine time it took."""
    return "\n".join([headline_table(summarize(rows)), "", *_compute_lines(rows)]).rstrip()


def update_readme(readme: Path, table: str, link: str) -> bool:
    """Replace the text between the benchmark markers in ``readme``; False when the markers are missing."""
    return replace_block(readme, README_START, README_END, f"{table}\n\nFull report: [{link}]({link}).")
