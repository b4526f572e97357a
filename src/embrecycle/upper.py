"""What is trained above the cut: the upper layers in full, the head only, LoRA, or bottleneck adapters.

Each ``train_*`` function ``(model, options) -> None`` freezes and unfreezes (and, for
LoRA and adapters, adds) parameters of a split task model; :mod:`embrecycle.modes`
registers them as training modes. Only layers k+1..N are ever adapted: the lower
layers are the cache's (full fine-tuning from text, ``train_everything``, is the exception).

* ``full``: layers k+1..N and the head are trained.
* ``head``: everything frozen but the head (the frozen-features baseline).
* ``lora``: low-rank updates (``peft``) on the linear layers of layers k+1..N, plus the head.
* ``adapter``: bottleneck adapters (down-projection, activation, zero-initialised
  up-projection, residual) after the feed-forward output (``pfeiffer``) or after
  both the attention and the feed-forward outputs (``houlsby``), plus the head.
  Own module: the ``adapters`` library (1.3.0, the newest on the package index) requires
  ``transformers~=4.57``, and embrecycle runs on transformers 5.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from .config import Checks, Settings, setting
from .errors import ConfigError
from .split import SplitEncoder

__all__ = [
    "Adapter",
    "SplitTaskModel",
    "UpperOptions",
    "canonical_name",
    "head_parameters",
    "train_adapters",
    "train_everything",
    "train_head",
    "train_lora",
    "train_upper_layers",
]

ADAPTER_PLACEMENTS = ("pfeiffer", "houlsby")


class SplitTaskModel(Protocol):
    """What a mode works on: a task model, its base model split at layer ``layer``."""

    task_model: nn.Module
    split: SplitEncoder
    layer: int


@dataclass
class UpperOptions(Settings):
    """Settings of the parameter-efficient modes (ignored by ``full`` and ``head``)."""

    lora_r: int = setting(8, "LoRA rank.")
    lora_alpha: float = setting(16.0, "LoRA alpha (the update is scaled by alpha / r).")
    lora_dropout: float = setting(0.1, "LoRA input dropout, in [0, 1).")
    lora_targets: list[str] | None = setting(
        None,
        "Linear modules to adapt inside each upper layer, by name suffix, comma-separated (e.g. query,value); "
        "default: every linear module of the layer.",
    )
    adapter_size: int = setting(64, "Bottleneck width of the adapters.")
    adapter_placement: str = setting(
        "pfeiffer",
        "pfeiffer (after the feed-forward output) or houlsby (after the attention and feed-forward outputs).",
        choices=ADAPTER_PLACEMENTS,
    )

    def problems(self) -> list[str]:
        checks = (
            Checks()
            .positive(lora_r=self.lora_r, lora_alpha=self.lora_alpha, adapter_size=self.adapter_size)
            .within("lora_dropout", self.lora_dropout, 0, 1, high_open=True)
            .choice("adapter_placement", self.adapter_placement, ADAPTER_PLACEMENTS)
        )
        checks.require(
            self.lora_targets is None or bool(self.lora_targets),
            "lora_targets is empty (name at least one module, or leave it unset for all)",
        )
        return checks.problems


def canonical_name(name: str) -> str:
    """A parameter's name in the plain transformers model (without LoRA/adapter wrapping)."""
    return name.replace(".base_layer.", ".")


def _freeze_all(model: SplitTaskModel) -> None:
    for p in model.task_model.parameters():
        p.requires_grad_(False)


def head_parameters(model: SplitTaskModel) -> Iterator[nn.Parameter]:
    """The task head's parameters: everything outside the base model, plus BERT's pooler."""
    base = {id(p) for p in model.split.base.parameters()}
    pooler = getattr(model.split.base, "pooler", None)
    pooled = {id(p) for p in pooler.parameters()} if isinstance(pooler, nn.Module) else set()
    for p in model.task_model.parameters():
        if id(p) not in base or id(p) in pooled:  # BERT's pooler belongs to the classification head
            yield p


def _unfreeze_head(model: SplitTaskModel) -> None:
    for p in head_parameters(model):
        p.requires_grad_(True)


def train_everything(model: SplitTaskModel, options: UpperOptions) -> None:
    """Full fine-tuning from text: every weight is trained."""
    for p in model.task_model.parameters():
        p.requires_grad_(True)


def train_upper_layers(model: SplitTaskModel, options: UpperOptions) -> None:
    """Layers k+1..N and the head are trained."""
    _freeze_all(model)
    for layer in model.split.upper_layers():
        for p in layer.parameters():
            p.requires_grad_(True)
    _unfreeze_head(model)


def train_head(model: SplitTaskModel, options: UpperOptions) -> None:
    """Only the head is trained; the upper layers run frozen (the frozen-features baseline)."""
    _freeze_all(model)
    _unfreeze_head(model)


def _upper_layers(model: SplitTaskModel, mode: str) -> list[nn.Module]:
    """Layers k+1..N, which a LoRA or adapter mode needs at least one of."""
    layers = model.split.upper_layers()
    if not layers:
        raise ConfigError(f"--upper {mode} needs layers above the cut, but k = {model.layer} is the last layer.")
    return layers


def _linear_names(layer: nn.Module) -> list[str]:
    return [n for n, m in layer.named_modules() if isinstance(m, nn.Linear)]


def train_lora(model: SplitTaskModel, options: UpperOptions) -> None:
    """LoRA (via ``peft``) on the linear modules of layers k+1..N; the head is trained."""
    from peft import LoraConfig, inject_adapter_in_model

    _freeze_all(model)
    layers = _upper_layers(model, "lora")
    available = _linear_names(layers[0])
    wanted = options.lora_targets or available
    unknown = [t for t in wanted if not any(n == t or n.endswith("." + t) for n in available)]
    if unknown:
        raise ConfigError(f"lora_targets {unknown} match no linear module of a layer; this model has {available}.")
    prefix = {id(m): n for n, m in model.task_model.named_modules()}
    targets = [
        f"{prefix[id(layer)]}.{n}"
        for layer in layers
        for n in _linear_names(layer)
        if any(n == t or n.endswith("." + t) for t in wanted)
    ]
    config = LoraConfig(
        r=options.lora_r,
        # peft annotates lora_alpha as int but scales by any number; the float is passed as given.
        lora_alpha=options.lora_alpha,  # type: ignore[arg-type]
        lora_dropout=options.lora_dropout,
        target_modules=targets,
    )
    inject_adapter_in_model(config, model.task_model)
    for name, p in model.task_model.named_parameters():
        p.requires_grad_("lora_" in name)
    _unfreeze_head(model)


class Adapter(nn.Module):
    """A linear layer followed by a residual bottleneck: ``y + up(gelu(down(y)))``, ``y = base_layer(x)``.

    The up-projection starts at zero, so a fresh adapter leaves the model's outputs unchanged.
    """

    def __init__(self, base_layer: nn.Linear, size: int) -> None:
        super().__init__()
        self.base_layer = base_layer
        width = base_layer.out_features
        self.adapter_down = nn.Linear(width, size)
        self.adapter_up = nn.Linear(size, width)
        nn.init.normal_(self.adapter_down.weight, std=1e-2)
        nn.init.zeros_(self.adapter_down.bias)
        nn.init.zeros_(self.adapter_up.weight)
        nn.init.zeros_(self.adapter_up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        return y + self.adapter_up(nn.functional.gelu(self.adapter_down(y)))


def train_adapters(model: SplitTaskModel, options: UpperOptions) -> None:
    """Bottleneck adapters in layers k+1..N (Pfeiffer or Houlsby placement); the head is trained."""
    _freeze_all(model)
    layers = _upper_layers(model, "adapter")
    family = model.split.family
    where = (
        [family.ffn_output] if options.adapter_placement == "pfeiffer" else [family.attention_output, family.ffn_output]
    )
    for layer in layers:
        for path in where:
            parent_path, _, attr = path.rpartition(".")
            parent = layer.get_submodule(parent_path) if parent_path else layer
            linear = getattr(parent, attr)
            if not isinstance(linear, nn.Linear):
                raise ConfigError(f"cannot place an adapter at {path!r} of a {model.split.config.model_type} layer.")
            setattr(parent, attr, Adapter(linear, options.adapter_size))
    for name, p in model.task_model.named_parameters():
        p.requires_grad_(".adapter_" in name)
    _unfreeze_head(model)
