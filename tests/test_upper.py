"""What is trained above the cut: parameter counts, exactness at initialisation, and isolation of each mode."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

from embrecycle import ConfigError
from embrecycle.model import RecyclingModel
from embrecycle.modes import UPPER_CHOICES
from embrecycle.tasks import ClassificationTask, NerTask
from embrecycle.upper import Adapter, UpperOptions
from tiny_models import VOCAB, tiny_configs

FAMILIES = tiny_configs()
CUT = 1  # of the tiny models' 4 layers


def _model(family: str, upper: str, ner: bool = False, **options: Any) -> RecyclingModel:
    config = copy.deepcopy(FAMILIES[family])
    task = NerTask(["O", "B-X", "I-X"]) if ner else ClassificationTask(["a", "b", "c"])
    config.num_labels = len(task.labels)
    auto = AutoModelForTokenClassification if ner else AutoModelForSequenceClassification
    torch.manual_seed(0)
    return RecyclingModel(auto.from_config(config), task, CUT, upper, UpperOptions(**options))


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, VOCAB, (3, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    ids[1, 6:] = 0
    return ids, mask


def _named_trainable(model: RecyclingModel) -> set[str]:
    return {n for n, p in model.task_model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("upper", ["lora", "adapter"])
def test_fresh_lora_and_adapters_leave_outputs_unchanged(family: str, upper: str) -> None:
    ids, mask = _inputs()
    plain = _model(family, "head").eval()
    adapted = _model(family, upper, adapter_placement="houlsby").eval()
    with torch.no_grad():
        ref = plain.forward_text(ids, mask)
        got = adapted.forward_text(ids, mask)
    assert (ref - got).abs().max().item() <= 1e-6
    trainable = _named_trainable(adapted)
    marker = "lora_" if upper == "lora" else ".adapter_"
    adapted_layers = {n.split(".layer.")[1].split(".")[0] for n in trainable if marker in n}
    assert adapted_layers == {str(i) for i in range(CUT, plain.split.num_layers)}  # only above the cut
    assert all(marker in n or "classifier" in n or "pooler" in n or "pre_classifier" in n for n in trainable)


@pytest.mark.parametrize("family", ["bert", "distilbert", "deberta-v2", "mpnet"])
def test_trainable_parameter_counts_per_mode(family: str) -> None:
    counts = {mode: _model(family, mode).num_trainable_parameters() for mode in [*UPPER_CHOICES, "full-finetune"]}
    assert counts["head"] < counts["lora"] < counts["full"] < counts["full-finetune"]
    assert counts["head"] < counts["adapter"] < counts["full"]
    head = counts["head"]
    # LoRA on every linear module of one layer: r * (in + out) each
    m = _model(family, "lora", lora_r=4)
    plain_layer = _model(family, "head").split.upper_layers()[0]
    linears = [mod for mod in plain_layer.modules() if isinstance(mod, torch.nn.Linear)]
    per_layer = sum(4 * (lin.in_features + lin.out_features) for lin in linears)
    n_upper = len(m.split.upper_layers())
    assert m.num_trainable_parameters() - head == per_layer * n_upper
    a = _model(family, "adapter", adapter_size=8)  # pfeiffer: one adapter per layer, hidden 32
    assert a.num_trainable_parameters() - head == (32 * 8 + 8 + 8 * 32 + 32) * n_upper


@pytest.mark.parametrize("upper", ["lora", "adapter"])
def test_training_changes_only_its_own_parameters_and_the_head(upper: str) -> None:
    model = _model("bert", upper, ner=True)
    before = {n: p.detach().clone() for n, p in model.task_model.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids, mask = _inputs()
    model.train()
    for _ in range(2):
        hidden = model.split.lower(ids, mask)
        logits = model.forward_cached(hidden, mask)
        loss = model.task.loss(logits, torch.randint(0, 3, ids.shape))
        loss.backward()
        opt.step()
        opt.zero_grad()
    changed = {n for n, p in model.task_model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= _named_trainable(model)
    assert any("classifier" in n for n in changed)
    assert any(("lora_" in n) or (".adapter_" in n) for n in changed)


def test_lora_targets_and_options_are_checked() -> None:
    m = _model("bert", "lora", lora_targets=["query", "value"])
    names = _named_trainable(m)
    assert any("query.lora_A" in n for n in names) and not any("key.lora_A" in n for n in names)
    with pytest.raises(ConfigError, match=r"\['qkv'\] match no linear module"):
        _model("bert", "lora", lora_targets=["qkv"])
    with pytest.raises(ConfigError, match="adapter_placement='middle'"):
        UpperOptions(adapter_placement="middle")
    with pytest.raises(ConfigError, match="lora_r=0"):
        UpperOptions(lora_r=0)
    with pytest.raises(ConfigError, match="unknown UpperOptions keys \\['rank'\\]"):
        UpperOptions.from_dict({"rank": 4})
    with pytest.raises(ConfigError, match="needs layers above the cut"):
        config = copy.deepcopy(FAMILIES["bert"])
        RecyclingModel(
            AutoModelForSequenceClassification.from_config(config), ClassificationTask(["a", "b"]), 4, "lora"
        )


def test_adapter_module_starts_as_identity() -> None:
    lin = torch.nn.Linear(6, 5)
    ad = Adapter(lin, 3)
    x = torch.randn(4, 6)
    assert torch.equal(ad(x), lin(x))


@pytest.mark.parametrize("upper", ["full", "head", "lora"])
def test_canonical_state_dict_is_the_plain_model(upper: str) -> None:
    model = _model("roberta", upper)
    with torch.no_grad():  # make LoRA's update non-zero
        for n, p in model.task_model.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.1)
    plain = AutoModelForSequenceClassification.from_config(model.task_model.config)
    plain.load_state_dict(model.canonical_state_dict(), strict=True)
    ids, mask = _inputs()
    model.eval(), plain.eval()
    with torch.no_grad():
        ref = model.forward_text(ids, mask)
        got = plain(input_ids=ids, attention_mask=mask).logits
    assert (ref - got).abs().max().item() <= 1e-5
    with pytest.raises(ConfigError, match="--upper lora or --upper full to export"):
        _model("roberta", "adapter").canonical_state_dict()
