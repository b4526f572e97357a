"""Per-architecture adapters that let an encoder run in two parts.

transformers hides the encoder loop inside each model's ``forward``. To run
layers ``[start, end)`` alone we need, per family, three facts: how the
embeddings are computed, what extra inputs every layer takes (attention mask,
relative positions, position bias...), and how the task heads of
``AutoModelFor{Sequence,Token}Classification`` turn the last hidden states
into logits. Each :class:`Family` below spells these out for one family.

Every adapter is checked by ``tests/test_split.py``: running the two parts
back to back reproduces the unsplit model exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeAlias

import torch
from torch import nn
from transformers.masking_utils import create_bidirectional_mask

from .errors import UnsupportedModelError

__all__ = ["Family", "get_family", "supported_model_types"]

# transformers models are structurally typed: their attribute trees (``encoder.layer``,
# ``classifier``...) differ per family, and torch types ``Module.__getattr__`` as ``Tensor | Module``.
HFModel: TypeAlias = Any


@dataclass(frozen=True)
class Family:
    """How to run one encoder family layer by layer.

    Attributes:
        name: Family name shown to users (``"bert"``, ``"deberta-v2"``...).
        model_types: ``config.model_type`` values this adapter handles.
        attention_output, ffn_output: Paths, inside one layer, of the linear modules that project the
            attention and the feed-forward outputs back to the hidden size (where adapters go).
    """

    name: str
    model_types: tuple[str, ...]
    attention_output: str = "attention.output.dense"
    ffn_output: str = "output.dense"

    # ---- structure -------------------------------------------------------
    def layers(self, base: HFModel) -> nn.ModuleList:
        """The encoder's list of transformer layers."""
        return base.encoder.layer

    def embedding_modules(self, base: HFModel) -> dict[str, nn.Module]:
        """Modules that compute the input of layer 0 (for fingerprints)."""
        return {"embeddings": base.embeddings}

    def shared_modules(self, base: HFModel) -> dict[str, nn.Module]:
        """Encoder-level modules every layer depends on (relative positions...)."""
        return {}

    # ---- computation -----------------------------------------------------
    def embed(
        self,
        base: HFModel,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Input of layer 0, shape ``(batch, seq, hidden)``."""
        return base.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)

    def context(self, base: HFModel, hidden: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, Any]:
        """Per-forward inputs shared by all layers, derived from the mask and shapes only."""
        mask = create_bidirectional_mask(config=base.config, inputs_embeds=hidden, attention_mask=attention_mask)
        return {"mask": mask}

    def run_layer(self, base: HFModel, index: int, hidden: torch.Tensor, ctx: dict[str, Any]) -> torch.Tensor:
        """Apply layer ``index`` to ``hidden``."""
        out = self.layers(base)[index](hidden, ctx["mask"])
        return out[0] if isinstance(out, tuple) else out

    # ---- task heads (mirror transformers' AutoModelFor* forward) ---------
    def sequence_logits(self, task_model: HFModel, sequence_output: torch.Tensor) -> torch.Tensor:
        """Logits of ``AutoModelForSequenceClassification`` from the last hidden states."""
        return task_model.classifier(sequence_output)

    def token_logits(self, task_model: HFModel, sequence_output: torch.Tensor) -> torch.Tensor:
        """Logits of ``AutoModelForTokenClassification`` from the last hidden states."""
        return task_model.classifier(task_model.dropout(sequence_output))


class _Bert(Family):
    def sequence_logits(self, task_model: HFModel, sequence_output: torch.Tensor) -> torch.Tensor:
        pooled = task_model.base_model.pooler(sequence_output)
        return task_model.classifier(task_model.dropout(pooled))


class _Electra(Family):
    def embedding_modules(self, base: HFModel) -> dict[str, nn.Module]:
        mods: dict[str, nn.Module] = {"embeddings": base.embeddings}
        if hasattr(base, "embeddings_project"):
            mods["embeddings_project"] = base.embeddings_project
        return mods

    def embed(
        self,
        base: HFModel,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        hidden = base.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
        if hasattr(base, "embeddings_project"):
            hidden = base.embeddings_project(hidden)
        return hidden


class _DistilBert(Family):
    def layers(self, base: HFModel) -> nn.ModuleList:
        return base.transformer.layer

    def embed(
        self,
        base: HFModel,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return base.embeddings(input_ids)

    def sequence_logits(self, task_model: HFModel, sequence_output: torch.Tensor) -> torch.Tensor:
        pooled = torch.relu(task_model.pre_classifier(sequence_output[:, 0]))
        return task_model.classifier(task_model.dropout(pooled))


class _MPNet(Family):
    def shared_modules(self, base: HFModel) -> dict[str, nn.Module]:
        return {"encoder.relative_attention_bias": base.encoder.relative_attention_bias}

    def embed(
        self,
        base: HFModel,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return base.embeddings(input_ids=input_ids)

    def context(self, base: HFModel, hidden: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, Any]:
        ctx = super().context(base, hidden, attention_mask)
        # The relative position bias depends only on the sequence length.
        ctx["position_bias"] = base.encoder.compute_position_bias(hidden)
        return ctx

    def run_layer(self, base: HFModel, index: int, hidden: torch.Tensor, ctx: dict[str, Any]) -> torch.Tensor:
        return self.layers(base)[index](hidden, ctx["mask"], ctx["position_bias"])[0]


class _DebertaV2(Family):
    def shared_modules(self, base: HFModel) -> dict[str, nn.Module]:
        enc = base.encoder
        mods: dict[str, nn.Module] = {}
        for name in ("rel_embeddings", "LayerNorm", "conv"):
            mod = getattr(enc, name, None)
            if isinstance(mod, nn.Module):
                mods[f"encoder.{name}"] = mod
        return mods

    def embed(
        self,
        base: HFModel,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return base.embeddings(input_ids=input_ids, token_type_ids=token_type_ids, mask=attention_mask)

    def context(self, base: HFModel, hidden: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, Any]:
        enc = base.encoder
        return {
            "input_mask": attention_mask,
            "mask": enc.get_attention_mask(attention_mask),
            "relative_pos": enc.get_rel_pos(hidden),
            "rel_embeddings": enc.get_rel_embedding(),
        }

    def run_layer(self, base: HFModel, index: int, hidden: torch.Tensor, ctx: dict[str, Any]) -> torch.Tensor:
        enc = base.encoder
        out, _ = enc.layer[index](
            hidden,
            ctx["mask"],
            query_states=None,
            relative_pos=ctx["relative_pos"],
            rel_embeddings=ctx["rel_embeddings"],
            output_attentions=False,
        )
        if index == 0 and enc.conv is not None:
            # DeBERTa mixes layer 0's output with its input (the embeddings).
            out = enc.conv(hidden, out, ctx["input_mask"])
        return out

    def sequence_logits(self, task_model: HFModel, sequence_output: torch.Tensor) -> torch.Tensor:
        pooled = task_model.pooler(sequence_output)
        return task_model.classifier(task_model.dropout(pooled))


_FAMILIES: tuple[Family, ...] = (
    _Bert("bert", ("bert",)),
    Family("roberta", ("roberta", "xlm-roberta", "camembert")),
    _Electra("electra", ("electra",)),
    _DistilBert("distilbert", ("distilbert",), "attention.out_lin", "ffn.lin2"),
    _DebertaV2("deberta-v2", ("deberta-v2",)),
    _MPNet("mpnet", ("mpnet",), "attention.attn.o"),
)
_BY_TYPE = {t: fam for fam in _FAMILIES for t in fam.model_types}


def supported_model_types() -> list[str]:
    """Sorted ``config.model_type`` values that can be split."""
    return sorted(_BY_TYPE)


def get_family(model_type: str) -> Family:
    """The adapter for ``config.model_type``.

    Raises:
        UnsupportedModelError: naming the type and listing the supported ones.
    """
    try:
        return _BY_TYPE[model_type]
    except KeyError:
        families = ", ".join(f"{f.name} ({'/'.join(f.model_types)})" for f in _FAMILIES)
        raise UnsupportedModelError(
            f"model_type {model_type!r} is not supported for embedding recycling. "
            f"Supported families: {families}. MiniLM checkpoints are BERT; DeBERTa-v3 is deberta-v2."
        ) from None
