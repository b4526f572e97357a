"""What is trained above the cut: the upper layers in full, the head only, LoRA, or bottleneck adapters.

Each mode is a function ``(model, options) -> None`` that freezes and unfreezes
(and, for LoRA and adapters, adds) parameters of a :class:`~embrecycle.model.RecyclingModel`.
Only layers k+1..N are ever adapted: the lower layers are the cache's.

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

from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .config import check_positive, from_dict
from .errors import ConfigError

if TYPE_CHECKING:
    from .model import RecyclingModel

__all__ = ["FROZEN_BASE_MODES", "UPPER_MODES", "Adapter", "UpperOptions", "canonical_name"]

ADAPTER_PLACEMENTS = ("pfeiffer", "houlsby")


@dataclass
class UpperOptions:
    """Settings of the parameter-efficient modes (ignored by ``full`` and ``head``).

    Attributes:
        lora_r, lora_alpha, lora_dropout: LoRA rank, scaling numerator (update scale = alpha / r) and input dropout.
        lora_targets: Linear modules to adapt inside each upper layer, by name suffix (e.g. ``query value``);
            default: every linear module of the layer (attention and feed-forward).
        adapter_size: Bottleneck width of the adapters.
        adapter_placement: ``pfeiffer`` (after the feed-forward output) or ``houlsby`` (after attention and
            feed-forward outputs).
    """

    lora_r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.1
    lora_targets: list[str] | None = field(default=None)
    adapter_size: int = 64
    adapter_placement: str = "pfeiffer"

    def __post_init__(self) -> None:
        check_positive(lora_r=self.lora_r, lora_alpha=self.lora_alpha, adapter_size=self.adapter_size)
        if not 0 <= self.lora_dropout < 1:
            raise ConfigError(f"lora_dropout={self.lora_dropout}: must be in [0, 1).")
        if self.adapter_placement not in ADAPTER_PLACEMENTS:
            raise ConfigError(
                f"adapter_placement={self.adapter_placement!r}: choose one of {list(ADAPTER_PLACEMENTS)}."
            )
        if self.lora_targets is not None and not self.lora_targets:
            raise ConfigError("lora_targets is empty: name at least one module, or leave it unset for all.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> UpperOptions:
        return from_dict(cls, data or {})


def canonical_name(name: str) -> str:
    """A parameter's name in the plain transformers model (without LoRA/adapter wrapping)."""
    return name.replace(".base_layer.", ".")


def _freeze_all(model: RecyclingModel) -> None:
    for p in model.task_model.parameters():
        p.requires_grad_(False)


def head_parameters(model: RecyclingModel) -> Iterator[nn.Parameter]:
    """The task head's parameters: everything outside the base model, plus BERT's pooler."""
    base = {id(p) for p in model.split.base.parameters()}
    pooler = getattr(model.split.base, "pooler", None)
    pooled = {id(p) for p in pooler.parameters()} if isinstance(pooler, nn.Module) else set()
    for p in model.task_model.parameters():
        if id(p) not in base or id(p) in pooled:  # BERT's pooler belongs to the classification head
            yield p


def _train_head(model: RecyclingModel) -> None:
    for p in head_parameters(model):
        p.requires_grad_(True)


def _upper_full(model: RecyclingModel, options: UpperOptions) -> None:
    """Layers k+1..N and the head are trained."""
    _freeze_all(model)
    for layer in model.split.upper_layers():
        for p in layer.parameters():
            p.requires_grad_(True)
    _train_head(model)


def _upper_head(model: RecyclingModel, options: UpperOptions) -> None:
    """Only the head is trained; the upper layers run frozen (the frozen-features baseline)."""
    _freeze_all(model)
    _train_head(model)


def _upper_layers(model: RecyclingModel, mode: str) -> list[nn.Module]:
    """Layers k+1..N, which a LoRA or adapter mode needs at least one of."""
    layers = model.split.upper_layers()
    if not layers:
        raise ConfigError(f"--upper {mode} needs layers above the cut, but k = {model.layer} is the last layer.")
    return layers


def _linear_names(layer: nn.Module) -> list[str]:
    return [n for n, m in layer.named_modules() if isinstance(m, nn.Linear)]


def _upper_lora(model: RecyclingModel, options: UpperOptions) -> None:
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
        r=options.lora_r, lora_alpha=options.lora_alpha, lora_dropout=options.lora_dropout, target_modules=targets
    )
    inject_adapter_in_model(config, model.task_model)
    for name, p in model.task_model.named_parameters():
        p.requires_grad_("lora_" in name)
    _train_head(model)


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


def _upper_adapter(model: RecyclingModel, options: UpperOptions) -> None:
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
    _train_head(model)


UPPER_MODES: dict[str, Callable[[RecyclingModel, UpperOptions], None]] = {
    "full": _upper_full,
    "head": _upper_head,
    "lora": _upper_lora,
    "adapter": _upper_adapter,
}
"""What is trained above the cut, by name."""

FROZEN_BASE_MODES = frozenset({"head", "lora", "adapter"})
"""Modes whose upper layers keep the pretrained weights (so a run depends on them, and tasks can share them)."""
