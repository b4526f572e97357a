"""Estimate, for each candidate cut k, what recycling at k costs and how much accuracy it keeps.

1. read the train/dev files, count their tokens, check candidates against the model's depth;
2. time a few full fine-tuning steps on real batches: the per-example cost that plans the rest and
   sets the default budget (``budget_share``, 25%, of one full fine-tuning run);
3. pick the largest training sample whose proxy runs fit the budget;
4. proxy runs, all on the same sample, seed and batch order: full fine-tuning (the reference), then
   recycling at every candidate k from a layer-k cache of the sample (kept: the real training at the
   recommended k reuses it and computes only the documents the sample left out);
5. predicted retention = proxy score at k / reference proxy score, made non-increasing in k (a later
   cut cannot be credited with more than an earlier one kept);
6. uncertainty: a paired bootstrap over the dev sample (the same resampled documents for the cut and the
   reference) gives each retention a 90% interval: how far the dev sample alone can move it (seed
   variation comes on top); a note says when it is wider than the target's margin;
7. stability: every proxy is also scored half-way through; a cut whose retention at the half-way point
   differs from the final one by more than the target's margin is still moving with the length of the
   proxies (short proxies measure how fast a configuration learns, not how well it ends up), so it is
   marked unstable and not recommended; recommend the highest stable k whose predicted retention
   meets the target.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._version import __version__
from ..batching import train_batches
from ..cache.builder import max_length_for
from ..cache.store import Cache
from ..data.readers import Example, read_examples
from ..data.writers import write_examples
from ..encoder import load_config, load_tokenizer
from ..errors import ConfigError, InputDataError
from ..tasks import get_task
from ..tokenization import encode_documents
from ..training import TrainConfig, train
from ..training.loop import read_split
from .config import SelectConfig

log = logging.getLogger(__name__)

__all__ = ["Candidate", "Selection", "recommend", "select_layer"]

PLAN_MARGIN = 0.85
"""Share of the remaining budget the plan may use (the per-example cost comes from a few steps)."""


@dataclass
class Candidate:
    """What one cut measured (``status`` ``skipped (budget)``: no proxy run, only the ceiling)."""

    layer: int
    fraction: float
    status: str
    proxy_score: float | None = None
    measured_retention: float | None = None
    predicted_retention: float | None = None
    half_proxy_score: float | None = None
    half_retention: float | None = None
    retention_interval: list[float] | None = None
    stable: bool | None = None
    train_examples_per_second: float | None = None
    train_speedup: float | None = None
    ceiling: float | None = None
    infer_docs_per_second: float | None = None
    infer_speedup: float | None = None
    cache_bytes_per_token: float | None = None
    corpus_cache_bytes: int | None = None
    cache_build_seconds: float | None = None
    cache: str | None = None
    seconds: float = 0.0


@dataclass
class Selection:
    """The selection's result (``selection.json``)."""

    model: str
    task: str
    metric: str
    num_layers: int
    target_retention: float
    recommended: int | None
    reference: dict[str, Any]
    candidates: list[Candidate]
    sample: int
    dev_sample: int
    proxy_epochs: int
    train_examples: int
    dev_examples: int
    corpus_tokens: int
    estimated_full_finetune_seconds: float
    budget_seconds: float
    seconds: float
    config: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    embrecycle_version: str = __version__

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def candidate(self, layer: int) -> Candidate:
        return next(c for c in self.candidates if c.layer == layer)

    def train_command(self) -> str | None:
        """The ``embrecycle train`` command for the recommended cut (reusing its cache)."""
        if self.recommended is None:
            return None
        c = self.config
        cache = self.candidate(self.recommended).cache
        return (
            f"embrecycle train --task {self.task} --model {self.model} --layer {self.recommended} "
            f"--train {c['train']} --dev {c['dev']} --epochs {c['epochs']} --lr {c['lr']} "
            f"--batch-size {c['batch_size']} --cache {cache} --out RUN_DIR"
        )


def _read_config(config: SelectConfig) -> TrainConfig:
    """How the real training reads the user's files (fields, format, seed): for reading them here."""
    return TrainConfig(
        task=config.task,
        model=config.model,
        layer=1,
        train=config.train,
        dev=config.dev,
        out=config.out,
        seed=config.seed,
        text_field=config.text_field,
        label_field=config.label_field,
        data_format=config.data_format,
    )


def _proxy_config(
    config: SelectConfig, layer: int, folder: Path, train: str, dev: str, **overrides: Any
) -> TrainConfig:
    """A proxy run at cut ``layer`` (0: the full fine-tuning reference) on sample files written by
    :func:`_write_samples` (JSON lines / CoNLL with the default fields)."""
    reference = layer == 0
    cache = None
    if not reference and config.cache_root:
        cache = str(Path(config.cache_root) / f"{Path(config.model.rstrip('/')).name}-L{layer}-{config.cache_dtype}")
    base: dict[str, Any] = {
        "task": config.task,
        "model": config.model,
        "layer": max(layer, 1),
        "train": train,
        "dev": dev,
        "out": str(folder / f"k{layer}"),
        "cache": cache,
        "baseline": "full-finetune" if reference else None,
        "epochs": config.proxy_epochs,
        "lr": (config.reference_lr or config.lr) if reference else config.lr,
        "batch_size": config.proxy_batch_size,
        "seed": config.seed,
        "max_length": config.max_length,
        "cache_dtype": config.cache_dtype,
        "eval_every": _half_way(len(read_examples(train)), config),
    }
    return TrainConfig(**{**base, **overrides})


def _half_way(m: int, config: SelectConfig) -> int:
    """Evaluate half-way and at the end of a proxy (the stability check compares the two)."""
    steps = -(-m // config.proxy_batch_size) * config.proxy_epochs
    return max(1, -(-steps // 2))


def _half_and_best(result: Any, metric: str) -> tuple[float, float]:
    """Best dev score up to the half-way evaluation, and over the whole proxy."""
    scores = [float(h[metric]) for h in result.history]
    return (max(scores[: max(1, len(scores) - 1)]), max(scores)) if scores else (0.0, 0.0)


@dataclass
class _Costs:
    """Seconds per example, measured by the timing probe."""

    train: float  # one full fine-tuning step, per example
    forward: float  # one full-model forward pass (evaluation), per document
    overhead: float  # per proxy run: loading the model, tokenizing


def _plan_seconds(costs: _Costs, m: int, d: int, epochs: int, ups: list[float]) -> float:
    """Predicted seconds of the reference + candidate proxies on ``m`` train / ``d`` dev examples.

    ``ups`` are the upper shares (N-k)/N of the candidates; a cache build runs the lower share.
    """
    up, low = sum(ups), sum(1 - u for u in ups)
    runs = (1 + len(ups)) * costs.overhead
    training = epochs * m * costs.train * (1 + up)
    builds = (m + d) * costs.forward * low
    evals = 2 * d * costs.forward * (1 + up)  # half-way and at the end
    return runs + training + builds + evals


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


CHANCE_MARGIN = 0.01
"""A reference proxy must beat a constant prediction by this much for its ratios to mean anything."""

BOOTSTRAP_SAMPLES = 300
"""Resamples of the dev sample for the retention intervals."""

INTERVAL = 0.9
"""Coverage of the retention intervals (5th to 95th percentile of the bootstrap)."""

MIN_TOLERANCE = 0.01
"""Largest change of a cut's retention between the half-way and the final evaluation of the proxies for
the cut to count as stable, unless the target's margin (1 - target) is larger."""


def _write_samples(
    config: SelectConfig, train_ex: list[Example], dev_ex: list[Example], m: int, d: int, folder: Path
) -> tuple[str, str, int]:
    """Seeded train/dev samples for the proxies, as files; dev examples whose class the train sample lacks
    are left out (a model cannot predict a label it never saw). Returns both paths and the dev count."""
    rng = random.Random(config.seed)
    train_s = [train_ex[i] for i in sorted(rng.sample(range(len(train_ex)), m))]
    if config.task == "classification":
        known = {str(e.label) for e in train_s}
        dev_ex = [e for e in dev_ex if str(e.label) in known]
    dev_s = [dev_ex[i] for i in sorted(rng.sample(range(len(dev_ex)), min(d, len(dev_ex))))]
    if dev_ex and not dev_s:
        raise InputDataError("no dev example has a label of the training sample; raise --sample.")
    ext = "jsonl" if config.task == "classification" else "conll"
    train_path = write_examples(train_s, folder / f"train.{ext}")
    dev_path = write_examples(dev_s, folder / f"dev.{ext}")
    return str(train_path), str(dev_path), len(dev_s)


def _constant_score(task: Any, gold: list[Any]) -> float:
    """Best dev-sample score of always predicting one of the task's (training) labels (NER: no entity).

    The best, not the majority's: with macro-F1 over many classes, a model stuck on a label that is rarer in
    training than in the dev sample can outscore the majority prediction while having learned nothing.
    """
    if task.name != "classification":
        return 0.0  # predicting no entity scores 0 F1
    return max(float(task.metrics(gold, [label] * len(gold))[task.primary_metric]) for label in task.labels)


def _timing_probe(
    config: SelectConfig, train_ex: list[Example], out: Path, batch: int, tokenizer: Any, limit: int
) -> tuple[float, Any]:
    """Seconds per padded token of full fine-tuning steps of ``batch`` real training examples, and the probe."""
    folder = out / "proxies" / f"timing-b{batch}"
    probe_train, _, _ = _write_samples(config, train_ex, [], min(len(train_ex), 4 * batch), 0, folder)
    probe = _run_probe(config, folder, probe_train, batch)
    docs = [e.doc for e in read_examples(probe_train)]
    lengths = np.array([len(e.input_ids) for e in encode_documents(tokenizer, docs, limit, "truncate")])
    return _seconds_per_token(probe, lengths, batch, config.seed), probe


def _run_probe(config: SelectConfig, folder: Path, probe_train: str, batch: int) -> Any:
    return train(  # evaluated on its own training sample: no label it has not seen
        _proxy_config(
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


def _padded_tokens(lengths: np.ndarray, batch: int, seed: int, epochs: int) -> list[int]:
    """Padded tokens (examples x longest of them) of every step of a run, in order: the batches the training
    loop will draw (:func:`~embrecycle.batching.train_batches`)."""
    return [len(b) * int(lengths[b].max()) for e in range(epochs) for b in train_batches(lengths, batch, seed, e)]


def _seconds_per_token(probe: Any, lengths: np.ndarray, batch: int, seed: int) -> float:
    """Seconds per padded token of a full fine-tuning step, from the probe's second pass (on CPU the first
    step of each new batch shape pays one-off costs that a real run's later epochs do not)."""
    tokens = _padded_tokens(lengths, batch, seed, 2)
    half = len(tokens) // 2
    steps, tokens = probe.step_seconds[half:], tokens[half:]
    if not steps or len(steps) != len(tokens):  # a one-step probe: time what there is
        steps, tokens = probe.step_seconds, _padded_tokens(lengths, batch, seed, 1)
    return sum(steps) / max(sum(tokens), 1)


def retention_interval(
    task: Any, gold: list[Any], reference: list[Any], cut: list[Any], seed: int, samples: int = BOOTSTRAP_SAMPLES
) -> list[float] | None:
    """90% paired-bootstrap interval of ``metric(cut) / metric(reference)`` over the dev documents.

    Each resample draws documents with replacement and scores both models' predictions on the same draw, so
    the interval shows how much the ratio depends on which dev documents were sampled. None when the
    predictions do not cover the dev sample or the reference scores 0 on most draws.
    """
    n = len(gold)
    if not n or len(reference) != n or len(cut) != n:
        return None
    metric = task.primary_metric
    rng = np.random.default_rng(seed)
    ratios = []
    for _ in range(samples):
        idx = rng.integers(0, n, n)
        g = [gold[i] for i in idx]
        ref = float(task.metrics(g, [reference[i] for i in idx])[metric])
        if ref > 0:
            ratios.append(float(task.metrics(g, [cut[i] for i in idx])[metric]) / ref)
    if len(ratios) < samples // 2:
        return None
    lo, hi = np.quantile(ratios, [(1 - INTERVAL) / 2, (1 + INTERVAL) / 2])
    return [float(lo), float(hi)]


def recommend(candidates: list[Candidate], target: float) -> int | None:
    """Set each measured cut's predicted retention (its proxy retention, made non-increasing in k: a later
    cut cannot be credited with more than an earlier one kept) and return the highest stable cut whose
    prediction meets ``target`` (None: none does, fine-tune fully)."""
    floor = float("inf")
    for c in sorted(candidates, key=lambda c: c.layer):
        if c.measured_retention is not None:
            floor = min(floor, c.measured_retention)
            c.predicted_retention = floor
    trusted = [
        c.layer
        for c in candidates
        if c.stable and c.predicted_retention is not None and c.predicted_retention >= target
    ]
    return max(trusted) if trusted else None


def select_layer(config: SelectConfig, progress: Callable[[str], None] | None = print) -> Selection:
    """Measure every candidate cut and recommend one (see the module docstring); writes ``config.out``."""
    say = progress or (lambda _msg: None)
    started = time.perf_counter()
    out = Path(config.out)
    model_cfg = load_config(config.model)
    n_layers = int(model_cfg.num_hidden_layers)
    candidates = config.resolved_candidates(n_layers)
    metric = get_task(config.task).primary_metric

    # 1. the data, as the real training will read it
    read_cfg = _read_config(config)
    train_ex = read_split(config.train, read_cfg, config.task, None, "train")
    dev_ex = read_split(config.dev, read_cfg, config.task, None, "dev")
    tokenizer = load_tokenizer(config.model, model_cfg.model_type)
    limit = config.max_length or max_length_for(model_cfg, tokenizer)  # what the caches will keep
    docs = [e.doc for e in train_ex + dev_ex]
    doc_lengths = [len(e.input_ids) for e in encode_documents(tokenizer, docs, limit, "truncate")]
    corpus_tokens = sum(doc_lengths)
    n, n_dev = len(train_ex), len(dev_ex)
    train_lengths = np.array(doc_lengths[:n])

    # 2. a few timed full fine-tuning steps on real batches, as seconds per padded token: at the planned run's
    # batch size (its steps, batched as the loop will batch the whole training file, give the cost of one
    # full fine-tuning run, which sets the default budget) and at the proxies' (which plans them)
    per_token, probe = _timing_probe(config, train_ex, out, config.proxy_batch_size, tokenizer, limit)
    real_per_token = per_token
    if config.batch_size != config.proxy_batch_size:
        real_per_token, _ = _timing_probe(config, train_ex, out, config.batch_size, tokenizer, limit)
    proxy_tokens = _padded_tokens(train_lengths, config.proxy_batch_size, config.seed, 1)
    costs = _Costs(
        train=per_token * sum(proxy_tokens) / n,
        forward=probe.eval_seconds / max(probe.dev_examples * len(probe.history), 1),
        overhead=max(probe.total_seconds - probe.train_seconds - probe.eval_seconds, 0.0),
    )
    run_tokens = sum(_padded_tokens(train_lengths, config.batch_size, config.seed, config.epochs))
    full_ft = real_per_token * run_tokens + costs.overhead  # its training time, as a run reports it
    real_train = full_ft / (config.epochs * n)
    budget = config.budget_minutes * 60 if config.budget_minutes else config.budget_share * full_ft
    say(
        f"{config.model}: {n_layers} layers, candidates {candidates}; {n} train / {n_dev} dev examples, "
        f"{corpus_tokens:,} tokens; one full fine-tuning run ~{full_ft / 60:.1f} min "
        f"({1 / real_train:.1f} ex/s), budget {budget / 60:.1f} min"
    )

    # 3. the largest sample whose proxies fit what is left of the budget
    ups = [(n_layers - k) / n_layers for k in candidates]
    epochs = config.proxy_epochs

    def dev_for(m: int) -> int:
        return min(n_dev, config.dev_sample or max(m, 200))

    def cost(m: int) -> float:
        return _plan_seconds(costs, m, dev_for(m), epochs, ups)

    available = budget - (time.perf_counter() - started)
    smallest = min(n, 4 * config.proxy_batch_size)
    if config.sample is not None:
        m = min(config.sample, n)
        if cost(m) > available:
            raise ConfigError(
                f"sample={config.sample} needs about {cost(m) / 60:.1f} min of proxy runs but "
                f"{max(available, 0) / 60:.1f} min of the {budget / 60:.1f}-min budget are left; "
                "raise --budget-minutes or lower --sample."
            )
    else:
        if cost(smallest) > PLAN_MARGIN * available:
            raise ConfigError(
                f"budget of {budget / 60:.2f} min is too small: the smallest useful selection ({smallest} examples, "
                f"{len(candidates)} candidates) needs about "
                f"{(cost(smallest) / PLAN_MARGIN + time.perf_counter() - started) / 60:.2f} min on this machine; "
                "raise --budget-minutes or pass fewer --candidates."
            )
        lo, hi = smallest, n
        while lo < hi:  # largest m with cost(m) <= margin * available
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if cost(mid) <= PLAN_MARGIN * available else (lo, mid - 1)
        m = lo
    d = dev_for(m)
    proxy_train, proxy_dev, d = _write_samples(config, train_ex, dev_ex, m, d, out / "proxies" / "data")
    say(f"proxies: {m} train / {d} dev examples, {epochs} epoch(s), planned {cost(m) / 60:.1f} min")

    # 4. the reference, then every candidate
    notes: list[str] = []
    t0 = time.perf_counter()
    ref = train(
        _proxy_config(config, 0, out / "proxies", proxy_train, proxy_dev),
        progress=False,
    )
    ref_half, ref_score = _half_and_best(ref, metric)
    ref_docs_s = d * len(ref.history) / ref.eval_seconds if ref.eval_seconds else 0.0
    reference = {
        "proxy_score": ref_score,
        "half_proxy_score": ref_half,
        "train_examples_per_second": ref.examples_per_second,
        "infer_docs_per_second": ref_docs_s,
        "seconds": time.perf_counter() - t0,
    }
    say(f"  full fine-tuning (reference): {metric} {ref_score:.4f}, {ref.examples_per_second:.1f} ex/s")
    task_cls = get_task(config.task)
    scorer = task_cls(task_cls.label_vocabulary(train_ex))
    dev_gold = [scorer.gold(e) for e in read_examples(proxy_dev)]
    chance = _constant_score(scorer, dev_gold)
    reference["constant_predictor_score"] = chance
    learned = ref_score > chance + CHANCE_MARGIN
    learned_half = ref_half > chance + CHANCE_MARGIN
    tolerance = max(1 - config.target_retention, MIN_TOLERANCE)
    if not learned:
        notes.append(
            f"the full fine-tuning proxy ({m} examples, {epochs} epoch(s)) scored {ref_score:.4f}, no better than "
            f"a constant prediction ({chance:.4f}): the budget is too short to learn this task, so no retention is "
            "predicted and nothing is recommended; raise --budget-minutes (or --sample / --proxy-epochs)."
        )

    results: list[Candidate] = []
    for k, up in zip(candidates, ups, strict=True):
        ceiling = n_layers / (n_layers - k) if k < n_layers else None
        spent = time.perf_counter() - started
        if spent + _plan_seconds(costs, m, d, epochs, [up]) - costs.overhead > budget:
            results.append(Candidate(k, k / n_layers, "skipped (budget)", ceiling=ceiling))
            notes.append(f"k={k} skipped: the budget was spent ({spent / 60:.1f} of {budget / 60:.1f} min).")
            continue
        t0 = time.perf_counter()
        r = train(
            _proxy_config(config, k, out / "proxies", proxy_train, proxy_dev),
            progress=False,
        )
        stats = Cache.open(r.cache).stats() if r.cache else {}
        half, score = _half_and_best(r, metric)
        retention = score / ref_score if learned else None
        half_retention = half / ref_half if learned and learned_half else None
        stable = retention is not None and half_retention is not None and abs(retention - half_retention) <= tolerance
        interval = (
            retention_interval(scorer, dev_gold, ref.dev_predictions, r.dev_predictions, config.seed)
            if learned
            else None
        )
        docs_s = d * len(r.history) / r.eval_seconds if r.eval_seconds else 0.0
        bpt = float(stats.get("bytes_per_token", 0.0))
        results.append(
            Candidate(
                layer=k,
                fraction=k / n_layers,
                status="measured",
                proxy_score=score,
                measured_retention=retention,
                half_proxy_score=half,
                half_retention=half_retention,
                retention_interval=interval,
                stable=stable if learned else None,
                train_examples_per_second=r.examples_per_second,
                train_speedup=r.examples_per_second / ref.examples_per_second if ref.examples_per_second else None,
                ceiling=ceiling,
                infer_docs_per_second=docs_s,
                infer_speedup=docs_s / ref_docs_s if ref_docs_s else None,
                cache_bytes_per_token=bpt,
                corpus_cache_bytes=int(bpt * corpus_tokens),
                cache_build_seconds=r.cache_build_seconds,
                cache=r.cache,
                seconds=time.perf_counter() - t0,
            )
        )
        span = f" [{_pct(interval[0])}, {_pct(interval[1])}]" if interval else ""
        say(
            f"  k={k}: {metric} {score:.4f} (retention {_pct(retention)}{span}, half-way {_pct(half_retention)}), "
            f"{r.examples_per_second:.1f} ex/s ({results[-1].train_speedup or 0:.2f}x)"
        )
        if learned and half_retention is None:
            notes.append(
                f"k={k} is unstable: the full fine-tuning reference had not learned anything half-way through the "
                f"proxies, so its final retention ({_pct(retention)}) cannot be checked for stability; it is not "
                "recommended. Raise --budget-minutes for longer proxies."
            )
        elif learned and not stable:
            notes.append(
                f"k={k} is unstable: its retention was {_pct(half_retention)} half-way through the proxies and "
                f"{_pct(retention)} at their end (more than {tolerance:.0%} apart), so the proxies are too short to "
                "judge it (they measure how fast each configuration learns, not where it ends); it is not "
                "recommended. Raise --budget-minutes for longer proxies."
            )

    spans = {c.layer: c.retention_interval[1] - c.retention_interval[0] for c in results if c.retention_interval}
    wide = [k for k, span in spans.items() if span > 2 * tolerance]
    if wide:
        widest = max(spans[k] for k in wide)
        notes.append(
            f"the dev sample ({d} documents) leaves the retention of k={wide} uncertain by up to "
            f"{widest:.0%} (90% interval, paired bootstrap over dev documents), more than twice the target's margin "
            f"({tolerance:.0%}): the predictions cannot separate cuts that close; raise --dev-sample (and the budget)."
        )

    # 5. monotone prediction and the recommendation
    recommended = recommend(results, config.target_retention)
    if recommended is None and learned:
        notes.append(
            f"no candidate is predicted to keep {config.target_retention:.0%} with stable proxies: fine-tune fully, "
            "raise --budget-minutes, try lower cuts (--candidates), or lower --target-retention."
        )
    selection = Selection(
        model=config.model,
        task=config.task,
        metric=metric,
        num_layers=n_layers,
        target_retention=config.target_retention,
        recommended=recommended,
        reference=reference,
        candidates=results,
        sample=m,
        dev_sample=d,
        proxy_epochs=epochs,
        train_examples=n,
        dev_examples=n_dev,
        corpus_tokens=corpus_tokens,
        estimated_full_finetune_seconds=full_ft,
        budget_seconds=budget,
        seconds=time.perf_counter() - started,
        config=dataclasses.asdict(config),
        notes=notes,
    )
    from .report import write_report

    write_report(selection, out)
    return selection
