"""Estimate, for each candidate cut k, what recycling at k costs and how much accuracy it keeps.

1. read the train/dev files, count their tokens, check candidates against the model's depth;
2. time a few full fine-tuning steps on real batches: the per-example cost that plans the rest and
   sets the default budget (``budget_share``, 25%, of one full fine-tuning run) (:mod:`.costs`);
3. pick the largest training sample whose proxy runs fit the budget (:class:`.costs.Budget`);
4. proxy runs, all on the same sample, seed and batch order: full fine-tuning (the reference), then
   recycling at every candidate k from a layer-k cache of the sample (kept: the real training at the
   recommended k reuses it and computes only the documents the sample left out) (:mod:`.proxies`);
5. predicted retention = proxy score at k / reference proxy score, made non-increasing in k (a later
   cut cannot be credited with more than an earlier one kept) (:mod:`.stats`);
6. uncertainty: a paired bootstrap over the dev sample (the same resampled documents for the cut and the
   reference) gives each retention a 90% interval: how far the dev sample alone can move it (seed
   variation comes on top); a note says when it is wider than the target's margin (:mod:`.notes`);
7. stability: every proxy is also scored half-way through; a cut whose retention at the half-way point
   differs from the final one by more than the target's margin is still moving with the length of the
   proxies (short proxies measure how fast a configuration learns, not how well it ends up), so it is
   marked unstable and not recommended; recommend the highest stable k whose predicted retention
   meets the target.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..cache.builder import max_length_for
from ..cache.store import Cache
from ..data.readers import Example, read_examples
from ..encoder import load_config, load_tokenizer
from ..tasks import Task, get_task
from ..tokenization import encode_documents
from ..training import TrainResult, read_split
from . import notes
from .config import SelectConfig
from .costs import Budget, measure_costs
from .proxies import cache_dirs, half_and_best, read_config, run_proxy, write_samples
from .report import write_report
from .results import Candidate, Selection
from .stats import constant_score, is_stable, learned, recommend, retention_interval, tolerance, wide_intervals

log = logging.getLogger(__name__)

__all__ = ["select_layer"]


@dataclass
class _Corpus:
    """The user's files as the real training reads them, and their token counts."""

    train: list[Example]
    dev: list[Example]
    tokenizer: Any
    limit: int  # tokens per document the caches keep
    tokens: int
    train_lengths: np.ndarray


@dataclass
class _Reference:
    """The full fine-tuning proxy, and what every candidate is compared with."""

    result: TrainResult
    score: float
    half: float
    docs_per_second: float
    scorer: Task
    gold: list[Any]
    chance: float  # the best constant prediction's score on the dev sample
    learned: bool  # its final score beats the constant prediction
    learned_half: bool  # and so did its score half-way

    def summary(self, seconds: float) -> dict[str, Any]:
        """What ``Selection.reference`` holds."""
        return {
            "proxy_score": self.score,
            "half_proxy_score": self.half,
            "train_examples_per_second": self.result.examples_per_second,
            "infer_docs_per_second": self.docs_per_second,
            "seconds": seconds,
            "constant_predictor_score": self.chance,
        }


def _read_corpus(config: SelectConfig, model_cfg: Any) -> _Corpus:
    read_cfg = read_config(config)
    train_ex = read_split(config.train, read_cfg, config.task, None, "train")
    dev_ex = read_split(config.dev, read_cfg, config.task, None, "dev")
    # an over-long --max-length fails here, before any proxy
    tokenizer = load_tokenizer(config.model, model_cfg.model_type, max_length=config.max_length, model_config=model_cfg)
    limit = config.max_length or max_length_for(model_cfg, tokenizer)  # what the caches will keep
    docs = [e.doc for e in train_ex + dev_ex]
    lengths = [len(e.input_ids) for e in encode_documents(tokenizer, docs, limit, "truncate", warn=False)]
    return _Corpus(train_ex, dev_ex, tokenizer, limit, sum(lengths), np.array(lengths[: len(train_ex)]))


def _reference(config: SelectConfig, folder: Path, proxy_train: str, proxy_dev: str, corpus: _Corpus) -> _Reference:
    ref = run_proxy(config, 0, folder, proxy_train, proxy_dev)
    task_cls = get_task(config.task)
    half, score = half_and_best(ref, task_cls.primary_metric)
    scorer = task_cls(task_cls.label_vocabulary(corpus.train))
    gold = [scorer.gold(e) for e in read_examples(proxy_dev)]
    chance = constant_score(scorer, gold)
    return _Reference(
        result=ref,
        score=score,
        half=half,
        docs_per_second=len(gold) * len(ref.history) / ref.eval_seconds if ref.eval_seconds else 0.0,
        scorer=scorer,
        gold=gold,
        chance=chance,
        learned=learned(score, chance),
        learned_half=learned(half, chance),
    )


def _measure(
    config: SelectConfig, k: int, n_layers: int, r: TrainResult, ref: _Reference, d: int, corpus_tokens: int
) -> Candidate:
    """Candidate ``k`` from its proxy run ``r``, compared with the reference."""
    metric = get_task(config.task).primary_metric
    stats = Cache.open(r.cache).stats() if r.cache else {}
    half, score = half_and_best(r, metric)
    retention = score / ref.score if ref.learned else None
    half_retention = half / ref.half if ref.learned and ref.learned_half else None
    stable = is_stable(retention, half_retention, tolerance(config.target_retention))
    interval = (
        retention_interval(ref.scorer, ref.gold, ref.result.dev_predictions, r.dev_predictions, config.seed)
        if ref.learned
        else None
    )
    ref_eps = ref.result.examples_per_second
    docs_s = d * len(r.history) / r.eval_seconds if r.eval_seconds else 0.0
    bpt = float(stats.get("bytes_per_token", 0.0))
    return Candidate(
        layer=k,
        fraction=k / n_layers,
        status="measured",
        proxy_score=score,
        measured_retention=retention,
        half_proxy_score=half,
        half_retention=half_retention,
        retention_interval=interval,
        stable=stable if ref.learned else None,
        train_examples_per_second=r.examples_per_second,
        train_speedup=r.examples_per_second / ref_eps if ref_eps else None,
        ceiling=n_layers / (n_layers - k) if k < n_layers else None,
        infer_docs_per_second=docs_s,
        infer_speedup=docs_s / ref.docs_per_second if ref.docs_per_second else None,
        cache_bytes_per_token=bpt,
        corpus_cache_bytes=int(bpt * corpus_tokens),
        cache_build_seconds=r.cache_build_seconds,
        cache=r.cache,
    )


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
    corpus = _read_corpus(config, model_cfg)
    n, n_dev = len(corpus.train), len(corpus.dev)

    # 2. a few timed full fine-tuning steps on real batches: the proxies' costs and one full fine-tuning run's
    costs, full_ft = measure_costs(config, corpus.train, corpus.train_lengths, out, corpus.tokenizer, corpus.limit)
    seconds = config.budget_minutes * 60 if config.budget_minutes else config.budget_share * full_ft
    ups = [(n_layers - k) / n_layers for k in candidates]
    budget = Budget(seconds, costs, started, ups, config.proxy_epochs, n_dev, config.dev_sample)
    say(
        f"{config.model}: {n_layers} layers, candidates {candidates}; {n} train / {n_dev} dev examples, "
        f"{corpus.tokens:,} tokens; one full fine-tuning run ~{full_ft / 60:.1f} min "
        f"({config.epochs * n / full_ft:.1f} ex/s), budget {seconds / 60:.1f} min"
    )

    # 3. the largest sample whose proxies fit what is left of the budget
    m = budget.choose_sample(n, config.sample, config.proxy_batch_size)
    folder = out / "proxies"
    proxy_train, proxy_dev, d = write_samples(config, corpus.train, corpus.dev, m, budget.dev_for(m), folder / "data")
    epochs = config.proxy_epochs
    say(f"proxies: {m} train / {d} dev examples, {epochs} epoch(s), planned {budget.cost(m) / 60:.1f} min")

    # 4. the reference, then every candidate
    t0 = time.perf_counter()
    ref = _reference(config, folder, proxy_train, proxy_dev, corpus)
    reference = ref.summary(seconds=time.perf_counter() - t0)
    say(f"  full fine-tuning (reference): {metric} {ref.score:.4f}, {ref.result.examples_per_second:.1f} ex/s")
    tol = tolerance(config.target_retention)
    found: list[str] = []
    if not ref.learned:
        found.append(notes.not_learned(m, epochs, ref.score, ref.chance))

    caches = cache_dirs(config, candidates)
    results: list[Candidate] = []
    for k, up in zip(candidates, ups, strict=True):
        spent = budget.spent()
        if not budget.fits(spent, m, d, up):
            ceiling = n_layers / (n_layers - k) if k < n_layers else None
            results.append(Candidate(k, k / n_layers, "skipped (budget)", ceiling=ceiling))
            found.append(notes.budget_spent(k, spent, seconds))
            continue
        t0 = time.perf_counter()
        r = run_proxy(config, k, folder, proxy_train, proxy_dev, caches[k])
        c = _measure(config, k, n_layers, r, ref, d, corpus.tokens)
        c.seconds = time.perf_counter() - t0
        results.append(c)
        interval = c.retention_interval
        span = f" [{notes.pct(interval[0])}, {notes.pct(interval[1])}]" if interval else ""
        say(
            f"  k={k}: {metric} {c.proxy_score:.4f} (retention {notes.pct(c.measured_retention)}{span}, half-way "
            f"{notes.pct(c.half_retention)}), {r.examples_per_second:.1f} ex/s ({c.train_speedup or 0:.2f}x)"
        )
        if ref.learned and c.half_retention is None:
            found.append(notes.unchecked_stability(k, c.measured_retention))
        elif ref.learned and not c.stable:
            found.append(notes.unstable(k, c.half_retention, c.measured_retention, tol))

    wide, widest = wide_intervals(results, 2 * tol)
    if wide:
        found.append(notes.uncertain(d, wide, widest, tol))

    # 5. monotone prediction and the recommendation
    recommended = recommend(results, config.target_retention)
    if recommended is None and ref.learned:
        found.append(notes.no_recommendation(config.target_retention))
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
        corpus_tokens=corpus.tokens,
        estimated_full_finetune_seconds=full_ft,
        budget_seconds=seconds,
        seconds=time.perf_counter() - started,
        config=dataclasses.asdict(config),
        notes=found,
    )
    write_report(selection, out)
    return selection
