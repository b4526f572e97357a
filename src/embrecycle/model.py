"""A task model that runs from cached layer-k states (or from text), and what is trained above the cut.

``RecyclingModel`` wraps a transformers ``AutoModelFor{Sequence,Token}Classification``:
its base model is split at layer k, its own head computes the logits. So the
weights are always a normal transformers checkpoint, and the recycled forward
equals the task model's own forward for the same weights.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import nn

from .errors import ConfigError
from .split import SplitEncoder
from .tasks.base import Task

__all__ = ["UPPER_MODES", "RecyclingModel"]


def _freeze_all(model: RecyclingModel) -> None:
    for p in model.task_model.parameters():
        p.requires_grad_(False)


def _head_params(model: RecyclingModel) -> Iterator[nn.Parameter]:
    base = {id(p) for p in model.split.base.parameters()}
    pooler = getattr(model.split.base, "pooler", None)
    pooled = {id(p) for p in pooler.parameters()} if isinstance(pooler, nn.Module) else set()
    for p in model.task_model.parameters():
        if id(p) not in base or id(p) in pooled:  # BERT's pooler belongs to the classification head
            yield p


def _upper_full(model: RecyclingModel) -> None:
    """Layers k+1..N and the head are trained."""
    _freeze_all(model)
    for layer in model.split.upper_layers():
        for p in layer.parameters():
            p.requires_grad_(True)
    for p in _head_params(model):
        p.requires_grad_(True)


def _upper_head(model: RecyclingModel) -> None:
    """Only the head is trained; the upper layers run frozen (the frozen-features baseline)."""
    _freeze_all(model)
    for p in _head_params(model):
        p.requires_grad_(True)


def _everything(model: RecyclingModel) -> None:
    """Full fine-tuning from text: every weight is trained."""
    for p in model.task_model.parameters():
        p.requires_grad_(True)


UPPER_MODES: dict[str, Callable[[RecyclingModel], None]] = {"full": _upper_full, "head": _upper_head}
"""What is trained above the cut, by name. Each entry sets ``requires_grad`` on the model's parameters."""


class RecyclingModel(nn.Module):
    """A task model split at layer ``layer``.

    Args:
        task_model: ``AutoModelFor{Sequence,Token}Classification`` instance.
        task: The task (labels, logits, loss).
        layer: Cut position k.
        upper: Key of :data:`UPPER_MODES`, or ``"all"`` to train every weight from text (full fine-tuning).
    """

    def __init__(self, task_model: nn.Module, task: Task, layer: int, upper: str = "full") -> None:
        super().__init__()
        self.task_model = task_model
        self.task = task
        self.split = SplitEncoder(task_model.base_model, layer)
        if upper != "all" and upper not in UPPER_MODES:
            raise ConfigError(f"upper={upper!r}: choose one of {sorted(UPPER_MODES)}.")
        self.upper_mode = upper
        (UPPER_MODES.get(upper) or _everything)(self)
        self.upper_trainable = any(p.requires_grad for layer in self.split.upper_layers() for p in layer.parameters())

    def train(self, mode: bool = True) -> RecyclingModel:
        super().train(mode)
        if mode and self.upper_mode != "all":
            # Frozen parts run as at caching time: no dropout.
            for mod in self.split.lower_modules().values():
                mod.eval()
            if not self.upper_trainable:
                for layer in self.split.upper_layers():
                    layer.eval()
        return self

    def forward_cached(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Logits from layer-k states ``(batch, seq, hidden)``."""
        if self.upper_trainable or not torch.is_grad_enabled():
            seq = self.split.upper(hidden, attention_mask)
        else:
            with torch.no_grad():
                seq = self.split.upper(hidden, attention_mask)
        return self.task.logits(self.split.family, self.task_model, seq)

    def forward_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Logits from token ids: the whole model, as transformers would run it."""
        if self.upper_mode == "all":
            hidden = self.split.lower(input_ids, attention_mask)
        else:
            with torch.no_grad():
                hidden = self.split.lower(input_ids, attention_mask)
        return self.forward_cached(hidden, attention_mask)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The task model's trained weights (what a run directory stores), by transformers key."""
        trainable = {id(p) for p in self.task_model.parameters() if p.requires_grad}
        return {
            k: v.detach().contiguous()
            for k, v in self.task_model.state_dict(keep_vars=True).items()
            if id(v) in trainable
        }

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.task_model.parameters() if p.requires_grad)
