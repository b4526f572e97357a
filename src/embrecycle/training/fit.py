"""Step 5 of training: the epochs, with evaluation, early stopping and a checkpoint at every improvement."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .. import faults
from ..batching import train_batches
from ..hardware import Hardware, autocast
from ..model import RecyclingModel
from ..progress import progress_bar
from ..tasks.base import Task
from ..tokenization import pad_ids
from .config import TrainConfig
from .evaluate import Evaluator
from .inputs import TrainingInputs

__all__ = ["FitResult", "fit"]


@dataclass
class FitResult:
    """What the epochs produced: the evaluation history, the best point and the timings."""

    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=dict)
    best_predictions: list[Any] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)
    read_seconds: float = 0.0
    seen: int = 0

    @property
    def train_seconds(self) -> float:
        return float(sum(self.epoch_seconds))


class _Steps:
    """One optimisation step on a batch of training examples, from cached states or from text."""

    def __init__(
        self, model: RecyclingModel, task: Task, inputs: TrainingInputs, targets: list[Any], pad_id: int,
        optimizer: torch.optim.Optimizer, scheduler: Any, max_grad_norm: float, hardware: Hardware,
    ) -> None:  # fmt: skip
        self.model, self.task, self.inputs, self.targets, self.pad_id = model, task, inputs, targets, pad_id
        self.optimizer, self.scheduler, self.max_grad_norm = optimizer, scheduler, max_grad_norm
        self.hardware = hardware
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        # fp16 needs its loss scaled (bf16 has float32's range and needs none)
        self.scaler = torch.amp.GradScaler(hardware.device.type) if hardware.precision == "fp16" else None

    def __call__(self, batch: np.ndarray, fit: FitResult) -> float:
        t0 = time.perf_counter()
        inputs, hw = self.inputs, self.hardware
        if inputs.cache is not None:
            b = inputs.cache.read_batch([inputs.train_index[i] for i in batch], dtype=hw.dtype)
            fit.read_seconds += time.perf_counter() - t0
            hidden, mask = b.hidden.to(hw.device), b.attention_mask.to(hw.device)
            with autocast(hw):
                logits = self.model.forward_cached(hidden, mask)
        else:
            ids, mask = pad_ids([inputs.train[i] for i in batch], self.pad_id)
            ids, mask = ids.to(hw.device), mask.to(hw.device)
            source = None
            if inputs.source_train is not None:  # a cross-model consumer: the source states, aligned
                source = inputs.source_train.batch(batch.tolist(), ids.shape[1], hw.device, hw.dtype)
                fit.read_seconds += time.perf_counter() - t0
            with autocast(hw):
                logits = self.model.forward_text(ids, mask, source)
        targets = self.task.collate([self.targets[i] for i in batch], mask.shape[1]).to(hw.device)
        loss = self.task.loss(logits.float(), targets)
        if self.scaler is not None:  # fp16: scale the loss, unscale before clipping
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.trainable, self.max_grad_norm)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.trainable, self.max_grad_norm)
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.item()


def _evaluates_now(config: TrainConfig, step: int, steps_per_epoch: int, total_steps: int) -> bool:
    if config.eval_every:
        return step % config.eval_every == 0 or step == total_steps
    return step % steps_per_epoch == 0


def fit(
    model: RecyclingModel,
    task: Task,
    config: TrainConfig,
    inputs: TrainingInputs,
    targets: list[Any],
    pad_id: int,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    evaluate: Evaluator,
    checkpoint: Callable[[], None],
    progress: bool,
    hardware: Hardware,
    save_state: Callable[[dict[str, Any]], None] | None = None,
    resume_from: dict[str, Any] | None = None,
) -> FitResult:
    """Train for ``config.epochs`` on length-bucketed shuffled batches; evaluate every epoch (or ``eval_every``
    steps), call ``checkpoint`` whenever the primary dev metric improves, stop after ``patience`` evaluations
    without improvement.

    After every evaluation ``save_state(position)`` is called (the weights of the best point are saved before
    it), with where the loop stands; ``resume_from`` is such a position, and the loop continues from it (the
    caller has put back the weights, optimiser, schedule and random generators of that moment).
    """
    step_once = _Steps(model, task, inputs, targets, pad_id, optimizer, scheduler, config.max_grad_norm, hardware)
    lengths = np.array([len(e.input_ids) for e in inputs.train])
    steps_per_epoch = -(-len(lengths) // config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    result, at = FitResult(), _Position()
    if resume_from is not None:
        result, at = _from_position(resume_from)
    model.train()
    bar = progress_bar(total_steps, f"train {config.method}", "step", enabled=progress)
    bar.update(at.step)
    try:
        while at.epoch < config.epochs and not at.stopped:
            batches = train_batches(lengths, config.batch_size, config.seed, at.epoch)
            for batch in batches[at.batch :]:
                t0 = time.perf_counter()
                result.losses.append(step_once(batch, result))
                faults.point("train step")
                dt = time.perf_counter() - t0
                at.epoch_seconds += dt
                result.step_seconds.append(dt)
                at.step += 1
                at.batch += 1
                result.seen += len(batch)
                bar.update(1)
                bar.set_postfix(loss=f"{result.losses[-1]:.4f}", ex_s=f"{len(batch) / dt:.0f}")
                if not _evaluates_now(config, at.step, steps_per_epoch, total_steps):
                    if save_state is not None and config.save_every and at.step % config.save_every == 0:
                        if at.batch == len(batches):
                            at.end_epoch(result)
                        save_state(_to_position(result, at))
                    continue
                scores = evaluate()
                point = {
                    "epoch": at.epoch + 1,
                    "step": at.step,
                    "train_loss": float(np.mean(result.losses[-steps_per_epoch:])),
                    **scores,
                }
                result.history.append(point)
                if not result.best or scores[task.primary_metric] > result.best[task.primary_metric]:
                    result.best, result.best_predictions, at.bad_evals = point, evaluate.predictions, 0
                    checkpoint()
                else:
                    at.bad_evals += 1
                    at.stopped = bool(config.patience and at.bad_evals >= config.patience)
                if at.batch == len(batches) or at.stopped:
                    at.end_epoch(result)
                if save_state is not None:
                    save_state(_to_position(result, at))
                if at.stopped:
                    break
            if at.batch == len(batches):  # an epoch that did not end on an evaluation
                at.end_epoch(result)
    finally:
        bar.close()
    return result


@dataclass
class _Position:
    """Where the loop stands: epoch (0-based), batches done in it, global step."""

    epoch: int = 0
    batch: int = 0
    step: int = 0
    bad_evals: int = 0
    stopped: bool = False
    epoch_seconds: float = 0.0

    def end_epoch(self, result: FitResult) -> None:
        result.epoch_seconds.append(self.epoch_seconds)
        self.epoch_seconds, self.batch = 0.0, 0
        if not self.stopped:
            self.epoch += 1


_RESULT_FIELDS = ("history", "best", "best_predictions", "losses", "step_seconds", "epoch_seconds", "read_seconds",
                  "seen")  # fmt: skip


def _to_position(result: FitResult, at: _Position) -> dict[str, Any]:
    return {**{k: getattr(result, k) for k in _RESULT_FIELDS}, "position": dataclasses.asdict(at)}


def _from_position(saved: dict[str, Any]) -> tuple[FitResult, _Position]:
    return FitResult(**{k: saved[k] for k in _RESULT_FIELDS}), _Position(**saved["position"])
