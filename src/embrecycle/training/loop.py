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

import dataclasses
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from ..cache.store import Cache
from ..encoder import model_identity
from ..errors import ConfigError
from ..files import check_free_space
from ..model import RecyclingModel
from ..run import WEIGHTS_FILE, save_weights
from ..run_dir import INCOMPLETE_MARKER, RESUME_FILE, open_staging, publish
from ..run_record import RUN_FILE, RunRecord, file_digest
from ..source_states import source_differences, source_record
from .build import BuiltModel, build_model
from .chance import chance_level
from .checkpoint import ResumeState, load_resume_state, restore, save_resume_state
from .config import TrainConfig
from .data import TrainingData, read_data
from .evaluate import Evaluator
from .fit import fit
from .inputs import TrainingInputs, prepare_inputs
from .optim import make_optimizer
from .result import CURVES_FILE, METRICS_FILE, TrainResult, read_metrics, write_metrics

__all__ = ["TrainResult", "train"]

log = logging.getLogger(__name__)

RUN_ONLY = ("resume", "overwrite", "out")
"""Settings that say where and how to write a run, not what it trains: a resumed run may change them."""


def train(config: TrainConfig, progress: bool = True) -> TrainResult:
    """Train a task model as ``config`` says and write its run directory. See the module docstring.

    The run is written to ``OUT.partial`` and renamed to ``OUT`` when it is complete (:mod:`embrecycle.run_dir`);
    ``config.resume`` continues an interrupted one from its last evaluation.

    Raises:
        RunExistsError: ``OUT`` exists (pass ``overwrite``), or an unfinished run is there (pass ``resume``).
        IncompleteRunError: ``resume`` with nothing to resume.
        DiskFullError: the disk cannot hold the run (checked before the work).
    """
    t_total = time.perf_counter()
    out = Path(config.out)
    stage, resuming = open_staging(out, config.overwrite, config.resume)
    if resuming and not (stage / INCOMPLETE_MARKER).exists():
        if (stage / METRICS_FILE).exists():  # finished, killed before it was published
            return _published(stage, out)
        # killed while the staging directory was being made, before its marker: nothing was trained. Start over
        # (a replacement of OUT, too: only --overwrite gets as far as making the staging directory when OUT exists)
        stage, resuming = open_staging(out, overwrite=True, resume=False)
    try:
        return _train(config, out, stage, resuming, progress, t_total)
    except BaseException:
        if not (stage / RESUME_FILE).exists() and (stage / INCOMPLETE_MARKER).exists():
            shutil.rmtree(stage, ignore_errors=True)  # nothing to resume from: leave no staging directory behind
        raise


def _train(config: TrainConfig, out: Path, stage: Path, resuming: bool, progress: bool, t_total: float) -> TrainResult:
    saved = _saved_state(stage, config) if resuming else None
    data = read_data(config)  # 1
    built = build_model(config, data.task)  # 2
    model = built.model
    if resuming and built.source is not None:
        _check_same_source(stage, built.source)
    check_free_space(stage, _bytes_needed(model), f"the run {out}")
    inputs = prepare_inputs(config, data, built.encoder, built.build, built.settings, progress, built.source)  # 3
    steps = -(-len(data.train) // config.batch_size) * config.epochs
    optimizer, scheduler = make_optimizer(model, config, steps)  # 4
    record = _record(config, data, built, inputs)
    record.write(stage)  # 6 (first part)
    pad_id = built.encoder.tokenizer.pad_token_id or 0
    evaluate = Evaluator(model, data.task, data.dev, inputs, pad_id, config.batch_size, built.hardware)
    targets = [data.task.target(e, enc) for e, enc in zip(data.train, inputs.train, strict=True)]
    if saved is not None:
        restore(saved, model, optimizer, scheduler)
        evaluate.seconds = float(saved.progress.get("eval_seconds", 0.0))
    settings = _what_it_trains(config)

    def save_state(position: dict[str, Any]) -> None:
        position = {**position, "eval_seconds": evaluate.seconds}
        save_resume_state(stage / RESUME_FILE, model, optimizer, scheduler, position, settings)

    fitted = fit(  # 5
        model, data.task, config, inputs, targets, pad_id, optimizer, scheduler, evaluate,
        checkpoint=lambda: save_weights(model, stage), progress=progress, hardware=built.hardware,
        save_state=save_state, resume_from=saved.progress if saved is not None else None,
    )  # fmt: skip
    weights = stage / WEIGHTS_FILE
    train_truncated, dev_truncated = inputs.truncated()
    chance = chance_level(data.task, data.train, data.dev, fitted.best_predictions, seed=config.seed)
    best_score = float(fitted.best.get(data.task.primary_metric, 0.0))
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
        train_truncated=train_truncated,
        dev_truncated=dev_truncated,
        read_seconds=fitted.read_seconds,
        weights_bytes=weights.stat().st_size if weights.exists() else 0,
        upper=config.mode.upper,
        device=str(built.hardware.device),
        precision=built.hardware.precision,
        threads=built.hardware.threads,
        resumed=saved is not None,
        lr=config.learning_rate,
        head_lr=config.head_learning_rate,
        primary_metric=data.task.primary_metric,
        chance_score=chance.score,
        constant_score=chance.constant,
        learned_nothing=not chance.beaten_by(best_score),
        losses=fitted.losses,
        step_seconds=fitted.step_seconds,
        dev_predictions=fitted.best_predictions,
    )
    if result.learned_nothing:
        log.warning("%s", result.learned_nothing_warning())
    write_metrics(result, data.task.primary_metric, title=f"{config.task} {config.method}", folder=stage)  # 6
    finished = [WEIGHTS_FILE, "labels.json", METRICS_FILE, CURVES_FILE]
    files = {name: file_digest(stage / name) for name in finished if (stage / name).exists()}
    dataclasses.replace(record, files=files).write(stage)  # the checksums every reader checks
    publish(stage, out)
    return result


def changed_settings(mine: dict[str, Any], theirs: dict[str, Any], ignore: tuple[str, ...] = ()) -> list[str]:
    """The keys of two saved training settings (``TrainConfig.to_dict``) whose values differ, leaving out
    where and how a run is written (:data:`RUN_ONLY`) and ``ignore``."""
    skip = {*RUN_ONLY, *ignore}
    return sorted(k for k in set(mine) | set(theirs) if k not in skip and mine.get(k) != theirs.get(k))


def _what_it_trains(config: TrainConfig) -> dict[str, Any]:
    return {k: v for k, v in config.to_dict().items() if k not in RUN_ONLY}


def _saved_state(stage: Path, config: TrainConfig) -> ResumeState | None:
    """The resume state in ``stage`` (None: interrupted before its first evaluation, so it starts over)."""
    theirs: dict[str, Any] | None = None
    saved = None
    if (stage / RESUME_FILE).exists():
        saved, theirs = load_resume_state(stage / RESUME_FILE)
    elif (stage / RUN_FILE).exists():
        try:
            theirs = json.loads((stage / RUN_FILE).read_text(encoding="utf-8")).get("train_config")
        except (OSError, ValueError):
            theirs = None  # run.json was being written when the run was killed: nothing was trained yet
    if theirs is not None:
        mine = config.to_dict()
        changed = changed_settings(mine, theirs)
        if changed:
            shown = ", ".join(f"{k}: {theirs.get(k)!r} -> {mine.get(k)!r}" for k in changed)
            raise ConfigError(
                f"--resume continues the run in {stage} with the settings it started with, but these differ: "
                f"{shown}. Resume with the same settings, or start over with --overwrite."
            )
    return saved


def _check_same_source(stage: Path, source: Cache) -> None:
    """Refuse to resume a cross-model run on other source states than it started with."""
    try:
        before = json.loads((stage / RUN_FILE).read_text(encoding="utf-8")).get("source")
    except (OSError, ValueError):
        return  # interrupted before run.json was written: nothing was trained on any states yet
    diff = source_differences(before["settings"], source.settings.to_dict()) if before else []
    if diff:
        raise ConfigError(
            f"--resume continues the run in {stage} on the source states it started with, but the source cache "
            f"{source.location} now holds other states (now vs then: {'; '.join(diff)}). Give --source-cache the "
            "cache the run started with, or start over with --overwrite."
        )


def _bytes_needed(model: RecyclingModel) -> int:
    """The best weights, plus the resume state (weights again and AdamW's two moments), in float32, plus 1 MB."""
    return model.num_trainable_parameters() * 4 * 4 + 1_000_000


def _published(stage: Path, out: Path) -> TrainResult:
    publish(stage, out)
    return read_metrics(out)


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
        label_counts=data.task.label_counts(data.train),
        source=source_record(inputs.source_train.cache, config.fusion) if inputs.source_train is not None else None,
    )
