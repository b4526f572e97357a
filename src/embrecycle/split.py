"""Split a transformers encoder at layer k into a lower and an upper part.

``SplitEncoder`` does not copy weights: both parts run the submodules of the
wrapped transformers model, so training the upper part trains the model, and
``save_pretrained`` on the wrapped model saves a normal checkpoint.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .errors import ConfigError
from .families import Family, HFModel, get_family

__all__ = ["SplitEncoder"]


class SplitEncoder(nn.Module):
    """An encoder viewed as ``lower`` (embeddings + layers 1..k) and ``upper`` (layers k+1..N).

    Args:
        base: A transformers base model (``AutoModel``), e.g. ``BertModel``.
        layer: The number of layers in the lower part, ``0 <= layer <= N``.
            ``0`` caches the embeddings output; ``N`` caches the last layer.

    Shapes:
        ``input_ids``, ``attention_mask``: ``(batch, seq)``; hidden states:
        ``(batch, seq, hidden)``. Padding must be on the right.
    """

    def __init__(self, base: HFModel, layer: int) -> None:
        super().__init__()
        self.base = base
        self.family: Family = get_family(base.config.model_type)
        self.num_layers = len(self.family.layers(base))
        if not isinstance(layer, int) or not 0 <= layer <= self.num_layers:
            raise ConfigError(
                f"layer={layer!r} is out of range for {base.config.model_type} with {self.num_layers} layers: "
                f"choose 0..{self.num_layers} (0 caches the embeddings, {self.num_layers} the last layer)."
            )
        self.layer = layer

    @property
    def config(self) -> Any:  # a transformers config: fields vary per family, so structurally typed
        return self.base.config

    @property
    def hidden_size(self) -> int:
        return int(self.base.config.hidden_size)

    def run_layers(self, hidden: torch.Tensor, attention_mask: torch.Tensor, start: int, end: int) -> torch.Tensor:
        """Run layers ``[start, end)`` on ``hidden`` (the input of layer ``start``)."""
        if start >= end:
            return hidden
        ctx = self.family.context(self.base, hidden, attention_mask)
        for i in range(start, end):
            hidden = self.family.run_layer(self.base, i, hidden, ctx)
        return hidden

    def lower(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Embeddings + layers 1..k: the states that are cached."""
        return self.run_layers(self.embed(input_ids, attention_mask, token_type_ids), attention_mask, 0, self.layer)

    def embed(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The embeddings: the input of layer 1."""
        return self.family.embed(self.base, input_ids, attention_mask, token_type_ids)

    def upper(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Layers k+1..N on states from :meth:`lower` (or the cache): the last hidden states."""
        param = next(self.base.parameters())
        hidden = hidden.to(device=param.device, dtype=param.dtype)
        return self.run_layers(hidden, attention_mask.to(param.device), self.layer, self.num_layers)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The unsplit computation: ``upper(lower(x))``."""
        return self.upper(self.lower(input_ids, attention_mask, token_type_ids), attention_mask)

    def lower_modules(self) -> dict[str, nn.Module]:
        """Every module the cached states depend on, by a stable name."""
        mods = dict(self.family.embedding_modules(self.base))
        mods.update(self.family.shared_modules(self.base))
        layers = self.family.layers(self.base)
        for i in range(self.layer):
            mods[f"layer.{i}"] = layers[i]
        return mods

    def upper_layers(self) -> list[nn.Module]:
        """The transformer layers above the cut."""
        return list(self.family.layers(self.base))[self.layer :]
