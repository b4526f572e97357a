"""The training recipe, top to bottom.

1. :func:`~embrecycle.training.data.read_data`: read the train/dev files, build the label
   vocabulary, reject unknown dev labels;
2. :func:`~embrecycle.training.build.build_model`: load ``AutoModelFor*`` with a fresh head
   (seeded), split it at layer k and apply the training mode (:mod:`embrecycle.modes`);
3. :func:`~embrecycle.training.inputs.prepare_inputs`: recycling builds or extends the cache
   for the train and dev documents (the lower layers run here, once) and keeps what the build
   hands back; training from text tokenizes;
4. :func:`~embrecycle.training.optim.make_optimizer`: AdamW, linear warmup/decay;
5. :func:`~embrecycle.training.fit.fit`: length-bucketed, shuffled batches re-padded per batch
   from the cache (or from text), clipping, evaluation on dev every epoch (or every N steps),
   the best weights saved, optional early stopping;
6. write the run directory: the run record first (``run.json``, ``labels.json``), the weights
   at every improvement, then ``metrics.json`` and the curves.
"""

from __future__ import annotations

import time
from pathlib import Path

from ..encoder import model_identity
from ..run import WEIGHTS_FILE, save_weights
from ..run_record import RunRecord
from .build import BuiltModel, build_model
from .config import TrainConfig
from .data import TrainingData, read_data
from .evaluate import Evaluator
from .fit import fit
from .inputs import TrainingInputs, prepare_inputs
from .optim import make_optimizer
from .result import TrainResult, write_metrics

__all__ = ["TrainResult", "train"]


def train(config: TrainConfig, progress: bool = True) -> TrainResult:
    """Train a task model as ``config`` says and write its run directory. See the module docstring."""
    t_total = time.perf_counter()
    out = Path(config.out)
    data = read_data(config)  # 1
    built = build_model(config, data.task)  # 2
    model = built.model
    inputs = prepare_inputs(config, data, built.encoder, built.build, built.settings, progress)  # 3
    steps = -(-len(data.train) // config.batch_size) * config.epochs
    optimizer, scheduler = make_optimizer(model, config, steps)  # 4
    record = _record(config, data, built, inputs)
    record.write(out)  # 6 (first part)
    pad_id = built.encoder.tokenizer.pad_token_id or 0
    evaluate = Evaluator(model, data.task, data.dev, inputs, pad_id, config.batch_size, built.hardware)
    targets = [data.task.target(e, enc) for e, enc in zip(data.train, inputs.train, strict=True)]
    fitted = fit(  # 5
        model, data.task, config, inputs, targets, pad_id, optimizer, scheduler, evaluate,
        checkpoint=lambda: save_weights(model, out), progress=progress, hardware=built.hardware,
    )  # fmt: skip
    weights = out / WEIGHTS_FILE
    result = TrainResult(
        run_dir=str(out),
        method=config.method,
        best=fitted.best,
        history=fitted.history,
        train_seconds=fitted.train_seconds,
        epoch_seconds=fitted.epoch_seconds,
        examples_per_second=fitted.seen / fitted.train_seconds if fitted.train_seconds else 0.0,
        cache_build_seconds=inputs.cache_seconds,
        eval_seconds=evaluate.seconds,
        total_seconds=time.perf_counter() - t_total,
        trainable_parameters=model.num_trainable_parameters(),
        train_examples=len(data.train),
        dev_examples=len(data.dev),
        cache=inputs.cache.location if inputs.cache else None,
        read_seconds=fitted.read_seconds,
        weights_bytes=weights.stat().st_size if weights.exists() else 0,
        upper=config.mode.upper,
        device=str(built.hardware.device),
        precision=built.hardware.precision,
        threads=built.hardware.threads,
        losses=fitted.losses,
        step_seconds=fitted.step_seconds,
        dev_predictions=fitted.best_predictions,
    )
    write_metrics(result, data.task.primary_metric, title=f"{config.task} {config.method}")  # 6
    return result


def _record(config: TrainConfig, data: TrainingData, built: BuiltModel, inputs: TrainingInputs) -> RunRecord:
    return RunRecord(
        task=config.task,
        labels=tuple(data.task.labels),
        mode=config.mode.name,
        states=built.settings,
        upper_options=built.model.options,
        upper_fingerprint=built.model.upper_fingerprint,
        model_revision=model_identity(config.model, built.model.split.config) or config.revision,
        cache=inputs.cache.location if inputs.cache else None,
        train_config=config.to_dict(),
        device=str(built.hardware.device),
        precision=built.hardware.precision,
    )
