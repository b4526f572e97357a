"""Tiny randomly initialised encoders of every supported family (fast and exact)."""

from __future__ import annotations

from transformers import (
    AutoConfig,
    BertConfig,
    DebertaV2Config,
    DistilBertConfig,
    ElectraConfig,
    MPNetConfig,
    RobertaConfig,
)

VOCAB = 99

# The tiny WordPiece vocabulary's whole words (tests build texts from them).
WORDS = [
    "the",
    "a",
    "of",
    "and",
    "to",
    "in",
    "is",
    "was",
    "for",
    "on",
    "with",
    "as",
    "by",
    "that",
    "this",
    "we",
    "our",
    "results",
    "method",
    "methods",
    "model",
    "data",
    "study",
    "used",
    "using",
    "show",
    "shows",
    "protein",
    "chemical",
    "disease",
    "patients",
    "cells",
    "drug",
    "effect",
    "effects",
    "background",
]

COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    num_hidden_layers=4,
    num_attention_heads=4,
    intermediate_size=37,
    max_position_embeddings=128,
    hidden_dropout_prob=0.1,
    attention_probs_dropout_prob=0.1,
)


def tiny_configs() -> dict[str, AutoConfig]:
    return {
        "bert": BertConfig(**COMMON),
        "roberta": RobertaConfig(**COMMON, pad_token_id=1),
        "electra": ElectraConfig(**{**COMMON, "embedding_size": 16}),
        "distilbert": DistilBertConfig(
            vocab_size=VOCAB, dim=32, n_layers=4, n_heads=4, hidden_dim=37, max_position_embeddings=128
        ),
        "deberta-v2": DebertaV2Config(
            **COMMON,
            relative_attention=True,
            pos_att_type=["p2c", "c2p"],
            position_buckets=16,
            max_relative_positions=32,
            norm_rel_ebd="layer_norm",
            conv_kernel_size=3,
            share_att_key=True,
            type_vocab_size=0,
        ),
        "deberta-v3": DebertaV2Config(
            **COMMON,
            relative_attention=True,
            pos_att_type=["p2c", "c2p"],
            position_buckets=16,
            max_relative_positions=32,
            norm_rel_ebd="layer_norm",
            share_att_key=True,
            type_vocab_size=0,
        ),
        "mpnet": MPNetConfig(**COMMON),
    }
