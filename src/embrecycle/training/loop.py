"""The training workflow, top to bottom.

1. read train/dev files, build the label vocabulary, reject unknown dev labels;
2. load ``AutoModelFor*`` with a fresh head (seeded) and split it at layer k;
3. recycling: build or extend the cache for the train and dev documents
   (the lower layers run here, once); full fine-tuning: skip;
4. train with AdamW, linear warmup/decay and clipping on length-bucketed,
   shuffled batches, re-padded per batch from the cache (or from text);
5. evaluate on dev every epoch (or every N steps), keep the best weights,
   optionally stop early;
6. write the run directory: weights, config, labels, metrics, curves.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from ..batching import train_batches
from ..cache.builder import BuildConfig, build_cache, cache_settings_for
from ..cache.settings import CacheSettings
from ..cache.store import Cache
from ..data.readers import Example, read_examples
from ..encoder import LoadedEncoder, load_tokenizer
from ..errors import ConfigError, InputDataError
from ..inference import document_logits
from ..model import RecyclingModel
from ..run import (
    WEIGHTS_FILE,
    build_task_model,
    read_run_metadata,
    save_weights,
    settings_meta,
    write_run_metadata,
)
from ..tasks import get_task
from ..tasks.base import Task
from ..tokenization import Encoded, encode_documents, is_empty, pad_ids
from .config import TrainConfig
from .plots import plot_curves

log = logging.getLogger(__name__)

__all__ = ["TrainResult", "default_cache_dir", "read_split", "train"]


@dataclass
class TrainResult:
    """What a run produced (also in ``metrics.json``)."""

    run_dir: str
    method: str
    best: dict[str, Any]
    history: list[dict[str, Any]]
    train_seconds: float
    epoch_seconds: list[float]
    examples_per_second: float
    cache_build_seconds: float
    eval_seconds: float
    total_seconds: float
    trainable_parameters: int
    train_examples: int
    dev_examples: int
    cache: str | None = None
    read_seconds: float = 0.0
    weights_bytes: int = 0
    upper: str = "full"
    losses: list[float] = field(default_factory=list, repr=False)
    step_seconds: list[float] = field(default_factory=list, repr=False)
    dev_predictions: list[Any] = field(default_factory=list, repr=False)
    """Per dev document, the prediction of the best evaluation (labels or tag lists; not in ``metrics.json``)."""

    def summary(self) -> str:
        metric = ", ".join(f"{k} {v:.4f}" for k, v in self.best.items() if k not in ("epoch", "step", "train_loss"))
        return (
            f"{self.method}: best dev {metric} | train {self.train_seconds:.1f} s "
            f"({self.examples_per_second:.1f} ex/s), cache build {self.cache_build_seconds:.1f} s, "
            f"{self.trainable_parameters:,} trainable parameters ({self.weights_bytes / 1e6:.1f} MB saved) "
            f"-> {self.run_dir}"
        )


def default_cache_dir(settings: CacheSettings) -> Path:
    """``$EMBRECYCLE_CACHE_HOME`` (default ``~/.cache/embrecycle/caches``) / ``<model>-L<k>-<dtype>-<fingerprint>``."""
    home = Path(os.environ.get("EMBRECYCLE_CACHE_HOME", Path.home() / ".cache" / "embrecycle" / "caches"))
    name = Path(settings.model.rstrip("/")).name or "model"
    return home / f"{name}-L{settings.layer}-{settings.dtype}-{settings.fingerprint()[:12]}"


def read_split(path: str, config: TrainConfig, task_name: str, limit: int | None, split: str) -> list[Example]:
    """The non-empty examples of a training or dev file, subsampled (seeded by ``config.seed``) to ``limit``."""
    examples = read_examples(path, config.data_format, text_field=config.text_field, label_field=config.label_field)
    kept = [e for e in examples if not is_empty(e.doc)]
    if len(kept) < len(examples):
        log.warning("%s: skipped %d empty documents", path, len(examples) - len(kept))
    if not kept:
        raise InputDataError(f"the {split} file {path} has no non-empty documents.")
    if task_name == "ner" and isinstance(kept[0].doc, str):
        raise InputDataError(f"{path}: NER needs CoNLL input (a token and a tag per line).")
    if limit is not None and len(kept) > limit:
        rng = random.Random(config.seed)
        kept = [kept[i] for i in sorted(rng.sample(range(len(kept)), limit))]
    return kept


def _param_groups(model: RecyclingModel, config: TrainConfig) -> list[dict[str, Any]]:
    """AdamW groups: no weight decay on biases and norms; the head at ``head_lr`` when set."""
    head = {id(p) for p in model.head_parameters()}
    groups: dict[tuple[float, float], list[torch.nn.Parameter]] = {}
    for name, p in model.task_model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim < 2 or "LayerNorm" in name or "layer_norm" in name
        lr = config.head_lr if config.head_lr is not None and id(p) in head else config.lr
        groups.setdefault((lr, 0.0 if no_decay else config.weight_decay), []).append(p)
    return [{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()]


class _Evaluator:
    """Dev-set evaluation shared by every evaluation point."""

    def __init__(
        self,
        model: RecyclingModel,
        task: Task,
        examples: Sequence[Example],
        encoded: Sequence[Encoded],
        cache: Cache | None,
        cache_index: Sequence[int | None],
        pad_id: int,
        batch_size: int,
    ) -> None:
        self.model, self.task, self.examples, self.encoded = model, task, examples, encoded
        self.cache, self.cache_index, self.pad_id, self.batch_size = cache, cache_index, pad_id, batch_size
        self.gold = [task.gold(e) for e in examples]
        self.predictions: list[Any] = []
        self.seconds = 0.0

    def __call__(self) -> dict[str, float]:
        t0 = time.perf_counter()
        logits = document_logits(
            self.model, self.encoded, self.cache, self.cache_index, self.pad_id, self.batch_size * 2
        )
        preds = [
            self.task.predicted(self.task.decode(lg, enc, ex.doc))
            for lg, enc, ex in zip(logits, self.encoded, self.examples, strict=True)
        ]
        self.model.train()
        self.seconds += time.perf_counter() - t0
        self.predictions = preds
        return self.task.metrics(self.gold, preds)


def train(config: TrainConfig, progress: bool = True) -> TrainResult:
    """Train a task model as ``config`` says and write its run directory. See the module docstring."""
    t_total = time.perf_counter()
    out = Path(config.out)
    task_cls = get_task(config.task)
    train_ex = read_split(config.train, config, config.task, config.train_limit, "train")
    dev_ex = read_split(config.dev, config, config.task, config.dev_limit, "dev")
    task = task_cls(task_cls.label_vocabulary(train_ex))
    task.check_labels(dev_ex, "dev")

    _seed_everything(config.seed)
    task_model = build_task_model(config.model, config.task, task.labels)
    # Baselines train from text: the whole model, or LoRA on every layer (cut at 0: only the embeddings frozen).
    layer = 0 if config.baseline == "lora" else config.layer
    upper = {"full-finetune": "all", "lora": "lora"}.get(config.baseline or "", config.upper)
    model = RecyclingModel(task_model, task, layer, upper, config.upper_options)
    if config.init_from:
        warm_start(model, config.init_from, config)
    tokenizer = load_tokenizer(config.model, model.split.config.model_type)
    encoder = LoadedEncoder(config.model, None, model.split, tokenizer)
    build_cfg = BuildConfig(
        model=config.model,
        layer=layer,
        max_length=config.max_length,
        truncation=config.truncation,
        dtype=config.cache_dtype,
    )
    settings = cache_settings_for(encoder, build_cfg)  # fingerprints the pretrained lower layers

    docs_train, docs_dev = [e.doc for e in train_ex], [e.doc for e in dev_ex]
    cache: Cache | None = None
    cache_seconds = 0.0
    train_index: list[int | None] = [None] * len(train_ex)
    dev_index: list[int | None] = [None] * len(dev_ex)
    if not config.baseline:
        cache_dir = config.cache or str(default_cache_dir(settings))
        t0 = time.perf_counter()
        summary = build_cache(
            docs_train + docs_dev,
            cache_dir,
            build_cfg,
            encoder=encoder,
            sources=[e.source for e in train_ex + dev_ex],
            progress=progress,
        )
        cache_seconds = time.perf_counter() - t0
        log.info("cache %s: %s", cache_dir, summary)
        cache = Cache.open(cache_dir, expected=settings)
        train_index = [cache.index_of(cache.key(d)) for d in docs_train]
        dev_index = [cache.index_of(cache.key(d)) for d in docs_dev]

    sources_train = [e.source for e in train_ex]
    enc_train = encode_documents(tokenizer, docs_train, settings.max_length, settings.truncation, sources_train)
    enc_dev = encode_documents(tokenizer, docs_dev, settings.max_length, settings.truncation)
    targets = [task.target(e, enc) for e, enc in zip(train_ex, enc_train, strict=True)]
    lengths = np.array([len(e.input_ids) for e in enc_train])
    pad_id = tokenizer.pad_token_id or 0
    evaluate = _Evaluator(model, task, dev_ex, enc_dev, cache, dev_index, pad_id, config.batch_size)

    steps_per_epoch = -(-len(train_ex) // config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    optimizer = torch.optim.AdamW(_param_groups(model, config), lr=config.lr)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * total_steps), total_steps)
    trainable = [p for p in model.parameters() if p.requires_grad]

    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "task": config.task,
        "labels": task.labels,
        "method": config.method,
        "upper": upper,
        "upper_options": model.options.to_dict(),
        "upper_fingerprint": model.upper_fingerprint,
        "model": config.model,
        "revision": None,
        **settings_meta(settings),
        "cache_dtype": config.cache_dtype,
        "cache": cache.location if cache else None,
        "train_config": dataclasses.asdict(config),
    }
    write_run_metadata(out, meta)

    history: list[dict[str, Any]] = []
    losses: list[float] = []
    step_seconds: list[float] = []
    best: dict[str, Any] = {}
    best_predictions: list[Any] = []
    bad_evals = 0
    train_seconds, epoch_seconds, step, seen, read_seconds = 0.0, [], 0, 0, 0.0
    stop = False
    model.train()
    bar = tqdm(total=total_steps, desc=f"train {config.method}", unit="step", disable=not progress)
    for epoch in range(config.epochs):
        t_epoch = 0.0
        for batch in train_batches(lengths, config.batch_size, config.seed, epoch):
            t0 = time.perf_counter()
            if cache is not None:
                b = cache.read_batch([train_index[i] for i in batch])  # type: ignore[misc]
                read_seconds += time.perf_counter() - t0
                logits = model.forward_cached(b.hidden, b.attention_mask)
                seq_len = b.hidden.shape[1]
            else:
                ids, mask = pad_ids([enc_train[i] for i in batch], pad_id)
                logits = model.forward_text(ids, mask)
                seq_len = ids.shape[1]
            loss = task.loss(logits, task.collate([targets[i] for i in batch], seq_len))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            dt = time.perf_counter() - t0
            t_epoch += dt
            step_seconds.append(dt)
            step += 1
            seen += len(batch)
            losses.append(loss.item())
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4f}", ex_s=f"{len(batch) / dt:.0f}")
            last_step = step == total_steps
            if (
                (config.eval_every and step % config.eval_every == 0)
                or (not config.eval_every and step % steps_per_epoch == 0)
                or (config.eval_every and last_step)
            ):
                scores = evaluate()
                point = {
                    "epoch": epoch + 1,
                    "step": step,
                    "train_loss": float(np.mean(losses[-steps_per_epoch:])),
                    **scores,
                }
                history.append(point)
                if not best or scores[task.primary_metric] > best[task.primary_metric]:
                    best, best_predictions, bad_evals = point, evaluate.predictions, 0
                    save_weights(model, out)
                else:
                    bad_evals += 1
                    if config.patience and bad_evals >= config.patience:
                        stop = True
                        break
        epoch_seconds.append(t_epoch)
        train_seconds += t_epoch
        if stop:
            break
    bar.close()

    result = TrainResult(
        run_dir=str(out),
        method=config.method,
        best=best,
        history=history,
        train_seconds=train_seconds,
        epoch_seconds=epoch_seconds,
        examples_per_second=seen / train_seconds if train_seconds else 0.0,
        cache_build_seconds=cache_seconds,
        eval_seconds=evaluate.seconds,
        total_seconds=time.perf_counter() - t_total,
        trainable_parameters=model.num_trainable_parameters(),
        train_examples=len(train_ex),
        dev_examples=len(dev_ex),
        cache=cache.location if cache else None,
        read_seconds=read_seconds,
        weights_bytes=(out / WEIGHTS_FILE).stat().st_size if (out / WEIGHTS_FILE).exists() else 0,
        upper=upper,
        losses=losses,
        step_seconds=step_seconds,
        dev_predictions=best_predictions,
    )
    per_step = ("losses", "step_seconds", "dev_predictions")
    metrics = {k: v for k, v in dataclasses.asdict(result).items() if k not in per_step}
    metrics["primary_metric"] = task.primary_metric
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    plot_curves(
        losses, history, task.primary_metric, out / "training_curves.png", title=f"{config.task} {config.method}"
    )
    return result


def warm_start(model: RecyclingModel, run_dir: str, config: TrainConfig) -> list[str]:
    """Load the weights this run trains from another run's ``model.safetensors``; returns their names.

    Raises:
        ConfigError: the run is of another base model or task, has other labels, or lacks a trained weight.
    """
    meta = read_run_metadata(run_dir)
    problems = [
        f"{what} {meta.get(key)!r} (this run: {mine!r})"
        for what, key, mine in (
            ("base model", "model", config.model),
            ("task", "task", config.task),
            ("labels", "labels", model.task.labels),
        )
        if meta.get(key) != mine
    ]
    if problems:
        raise ConfigError(
            f"init_from={run_dir!r} cannot start this run: it was trained with " + "; ".join(problems) + ". "
            "Warm-start only from a run of the same base model, task and label set."
        )
    state = load_file(str(Path(run_dir) / WEIGHTS_FILE))
    wanted = model.trainable_state_dict()
    missing = sorted(set(wanted) - set(state))
    if missing:
        raise ConfigError(
            f"init_from={run_dir!r} lacks {len(missing)} of the weights this run trains, e.g. {missing[:3]}: "
            "warm-start from a run that trained them (e.g. full fine-tuning, or the same cut and upper mode)."
        )
    model.task_model.load_state_dict({k: state[k] for k in wanted}, strict=False)
    return sorted(wanted)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
