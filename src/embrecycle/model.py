"""A task model that runs from cached layer-k states (or from text), and what is trained above the cut.

``RecyclingModel`` wraps a transformers ``AutoModelFor{Sequence,Token}Classification``:
its base model is split at layer k, its own head computes the logits. So the
weights are always a normal transformers checkpoint, and the recycled forward
equals the task model's own forward for the same weights.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .encoder import module_fingerprint
from .errors import ConfigError
from .fusion import FusionLayer
from .modes import TrainingMode, get_mode
from .split import SplitEncoder
from .tasks.base import Task
from .upper import UpperOptions, canonical_name, head_parameters

__all__ = ["FUSION_PREFIX", "RecyclingModel"]

FUSION_PREFIX = "embrecycle_fusion."
"""Key prefix of a cross-model run's fusion layer among its saved weights (beside the transformers keys)."""


class RecyclingModel(nn.Module):
    """A task model split at layer ``layer``.

    Args:
        task_model: ``AutoModelFor{Sequence,Token}Classification`` instance.
        task: The task (labels, logits, loss).
        layer: Cut position k.
        mode: The training mode (:mod:`embrecycle.modes`), or its name.
        options: Settings of the LoRA and adapter modes.
    """

    def __init__(
        self,
        task_model: nn.Module,
        task: Task,
        layer: int,
        mode: TrainingMode | str = "full",
        options: UpperOptions | dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.task_model = task_model
        self.task = task
        self.layer = layer
        self.split = SplitEncoder(task_model.base_model, layer)
        self.mode = mode if isinstance(mode, TrainingMode) else get_mode(mode)
        self.options = options if isinstance(options, UpperOptions) else UpperOptions.from_dict(options)
        # The pretrained upper layers a frozen-base run depends on, fingerprinted before anything is added.
        self.upper_fingerprint = (
            module_fingerprint({str(i): m for i, m in enumerate(self.split.upper_layers())})
            if self.mode.frozen_base
            else None
        )
        self.mode.apply(self, self.options)
        self.upper_trainable = any(p.requires_grad for layer in self.split.upper_layers() for p in layer.parameters())
        self.fusion: FusionLayer | None = None

    def add_fusion(self, source_hidden: int, kind: str = "linear") -> FusionLayer:
        """Make this a cross-model consumer: a trainable fusion layer joins a source model's states (aligned onto
        this model's tokens) to its embeddings before its layers (:mod:`embrecycle.fusion`).

        The fused input feeds every layer. With a cut at layer k > 0, layers 1..k keep their pretrained weights
        (the gradient still flows through them into the fusion layer) and layers k+1..N train as the mode says.
        """
        device = next(self.task_model.parameters()).device
        self.fusion = FusionLayer(int(self.split.config.hidden_size), source_hidden, kind).to(device)
        return self.fusion

    def train(self, mode: bool = True) -> RecyclingModel:
        super().train(mode)
        if mode and not self.mode.trains_lower:
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

    def forward_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, source: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits from token ids: the whole model, as transformers would run it.

        A cross-model consumer (:meth:`add_fusion`) also takes ``source``: the source model's states aligned
        onto these tokens, ``(batch, seq, source_hidden)``.
        """
        if self.fusion is not None:
            if source is None:
                raise ValueError("a cross-model consumer needs the source states of its documents")
            with torch.no_grad():
                embeddings = self.split.embed(input_ids, attention_mask)
            fused = self.fusion(embeddings, source)
            # with gradients in every mode, through the frozen layers below the cut too: the fusion trains
            hidden = self.split.run_layers(fused, attention_mask, 0, self.layer)
            seq = self.split.upper(hidden, attention_mask)
            return self.task.logits(self.split.family, self.task_model, seq)
        if self.mode.trains_lower:
            hidden = self.split.lower(input_ids, attention_mask)
        else:
            with torch.no_grad():
                hidden = self.split.lower(input_ids, attention_mask)
        return self.forward_cached(hidden, attention_mask)

    def head_parameters(self) -> list[nn.Parameter]:
        """The task head's parameters (classifier, and BERT's pooler for sequence classification)."""
        return list(head_parameters(self))

    def canonical_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights as a plain transformers model names them, LoRA merged into its base weights.

        Raises:
            ConfigError: for adapter runs (a bottleneck adapter is not a weight of the plain model).
        """
        if self.fusion is not None:
            raise ConfigError(
                "a cross-model run cannot become a plain transformers model: its fusion layer, which joins the "
                "source model's cached states to the consumer's embeddings, has no place in a transformers "
                "architecture, and the model needs the source states as a second input. Serve it with "
                "`embrecycle predict`/`serve`, or train a plain run to export."
            )
        if not self.mode.exportable:
            raise ConfigError(
                f"a {self.mode.name} run ({self.mode.description}) cannot become a plain transformers model: its "
                "weights are extra layers, not weight updates. Train with --upper lora or --upper full to export."
            )
        state = {
            canonical_name(k): v.detach().clone() for k, v in self.task_model.state_dict().items() if "lora_" not in k
        }
        from peft.tuners.lora import LoraLayer

        for name, module in self.task_model.named_modules():
            if isinstance(module, LoraLayer):  # merged into the weight it adapts
                for adapter in module.lora_A:
                    key = canonical_name(f"{name}.base_layer.weight")
                    # Each concrete LoraLayer (Linear, Embedding, Conv...) defines get_delta_weight; the mixin doesn't.
                    delta = module.get_delta_weight(adapter)  # type: ignore[attr-defined]
                    state[key] = state[key] + delta.detach()
        return state

    def merge_lora(self) -> int:
        """Fold every LoRA update into the weight it adapts and drop the LoRA modules (for prediction: the
        same function, without the low-rank matmuls beside every linear layer); returns how many were merged.

        The merged weights are this model's own afterwards: merge before sharing weights between models, and do
        not train the model further.
        """
        from peft.tuners.lora import LoraLayer

        merged = 0
        for name, module in list(self.task_model.named_modules()):
            if not isinstance(module, LoraLayer):
                continue
            base = module.get_base_layer()
            with torch.no_grad():
                for adapter in module.lora_A:
                    # Each concrete LoraLayer defines get_delta_weight; the mixin doesn't.
                    delta = module.get_delta_weight(adapter)  # type: ignore[attr-defined]
                    base.weight.data = base.weight.data + delta.to(base.weight.dtype)
            parent, _, attr = name.rpartition(".")
            setattr(self.task_model.get_submodule(parent), attr, base)
            merged += 1
        return merged

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The task model's trained weights (what a run directory stores), by transformers key."""
        trainable = {id(p) for p in self.task_model.parameters() if p.requires_grad}
        state = {
            k: v.detach().contiguous()
            for k, v in self.task_model.state_dict(keep_vars=True).items()
            if id(v) in trainable
        }
        if self.fusion is not None:
            state.update({FUSION_PREFIX + k: v.detach().contiguous() for k, v in self.fusion.state_dict().items()})
        return state

    def load_trained_state(self, state: dict[str, torch.Tensor]) -> None:
        """Put saved trained weights back: transformers keys into the task model, fusion keys into the fusion layer.

        Raises:
            ConfigError: fusion weights for a model without a fusion layer.
        """
        device = next(self.task_model.parameters()).device
        fusion = {k[len(FUSION_PREFIX) :]: v.to(device) for k, v in state.items() if k.startswith(FUSION_PREFIX)}
        rest = {k: v.to(device) for k, v in state.items() if not k.startswith(FUSION_PREFIX)}
        self.task_model.load_state_dict(rest, strict=False)
        if fusion:
            if self.fusion is None:
                raise ConfigError("the saved weights hold a cross-model fusion layer, but this model has none.")
            self.fusion.load_state_dict(fusion)

    def num_trainable_parameters(self) -> int:
        fusion = sum(p.numel() for p in self.fusion.parameters()) if self.fusion is not None else 0
        return sum(p.numel() for p in self.task_model.parameters() if p.requires_grad) + fusion
