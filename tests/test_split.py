"""The core invariant: upper(lower(x)) reproduces the unsplit model, for every family and every cut."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModel, AutoModelForSequenceClassification, AutoModelForTokenClassification, GPT2Config

from embrecycle import ConfigError, SplitEncoder, UnsupportedModelError, supported_model_types
from tiny_models import tiny_configs

CONFIGS = tiny_configs()
EAGER_ONLY = {"deberta-v2", "deberta-v3", "mpnet"}
CASES = [(name, attn) for name in CONFIGS for attn in ("eager", "sdpa") if not (attn == "sdpa" and name in EAGER_ONLY)]


def _inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 99, (3, 13), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0  # right padding
    mask[2, 4:] = 0
    return ids, mask


@pytest.mark.parametrize(("name", "attn"), CASES)
def test_split_reproduces_unsplit_model(name: str, attn: str) -> None:
    torch.manual_seed(0)
    model = AutoModel.from_config(CONFIGS[name], attn_implementation=attn).eval()
    ids, mask = _inputs()
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask).last_hidden_state
        for k in range(SplitEncoder(model, 0).num_layers + 1):
            split = SplitEncoder(model, k)
            out = split.upper(split.lower(ids, mask), mask)
            diff = ((out - ref).abs() * mask[..., None]).max().item()
            assert diff <= 1e-5, f"{name}/{attn} k={k}: max diff {diff}"
            # no padding at all
            full = model(input_ids=ids[:1]).last_hidden_state
            one = split.upper(split.lower(ids[:1], torch.ones_like(ids[:1])), torch.ones_like(ids[:1]))
            assert (one - full).abs().max().item() <= 1e-5


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("task", ["sequence", "token"])
def test_head_logits_match_transformers_task_model(name: str, task: str) -> None:
    torch.manual_seed(0)
    cls = AutoModelForSequenceClassification if task == "sequence" else AutoModelForTokenClassification
    config = CONFIGS[name]
    config.num_labels = 3
    model = cls.from_config(config, attn_implementation="eager").eval()
    ids, mask = _inputs(1)
    split = SplitEncoder(model.base_model, 2)
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask).logits
        seq = split.upper(split.lower(ids, mask), mask)
        head = split.family.sequence_logits if task == "sequence" else split.family.token_logits
        logits = head(model, seq)
    if task == "token":
        ref, logits = ref[mask.bool()], logits[mask.bool()]
    assert torch.allclose(logits, ref, atol=1e-5), (logits - ref).abs().max()


def test_supported_families_are_listed_in_the_error() -> None:
    model = AutoModel.from_config(GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=50))
    with pytest.raises(UnsupportedModelError) as err:
        SplitEncoder(model, 1)
    msg = str(err.value)
    assert "'gpt2'" in msg
    for family in ("bert", "roberta", "electra", "distilbert", "deberta-v2", "mpnet"):
        assert family in msg
    assert set(supported_model_types()) >= {"bert", "roberta", "electra", "distilbert", "deberta-v2", "mpnet"}


@pytest.mark.parametrize("layer", [-1, 5, 2.5])
def test_layer_out_of_range(layer: float) -> None:
    model = AutoModel.from_config(CONFIGS["bert"])
    with pytest.raises(ConfigError, match="out of range"):
        SplitEncoder(model, layer)  # type: ignore[arg-type]
