"""Cross-model recycling's building blocks: token alignment by character spans, and the fusion layer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, BertTokenizer

from embrecycle import ConfigError
from embrecycle.align import align, aligned_states
from embrecycle.fusion import FusionLayer
from embrecycle.model import RecyclingModel
from embrecycle.run import build_task_model
from embrecycle.tasks import ClassificationTask
from embrecycle.tokenization import encode_documents, pad_ids

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _tokenizer(tmp_path: Path, name: str, words: list[str]) -> BertTokenizer:
    vocab = {w: i for i, w in enumerate(SPECIALS + words)}
    tok = BertTokenizer(vocab=vocab, do_lower_case=True)
    tok.save_pretrained(tmp_path / name)
    return AutoTokenizer.from_pretrained(tmp_path / name)  # the fast tokenizer: character offsets


@pytest.fixture
def pair(tmp_path: Path) -> tuple[BertTokenizer, BertTokenizer]:
    consumer = _tokenizer(tmp_path, "consumer", ["the", "protein", "method", "."])
    source = _tokenizer(tmp_path, "source", ["the", "pro", "##tein", "meth", "##od", "."])
    return consumer, source


def test_span_alignment_of_two_vocabularies_hand_checked(pair: tuple[BertTokenizer, BertTokenizer]) -> None:
    consumer, source = pair
    text = "the protein method."
    [c] = encode_documents(consumer, [text], 64)
    [s] = encode_documents(source, [text], 64)
    assert consumer.convert_ids_to_tokens(c.input_ids) == ["[CLS]", "the", "protein", "method", ".", "[SEP]"]
    assert source.convert_ids_to_tokens(s.input_ids) == [
        "[CLS]", "the", "pro", "##tein", "meth", "##od", ".", "[SEP]"
    ]  # fmt: skip
    want = np.zeros((6, 8), np.float32)
    want[0, 0] = 1  # [CLS] -> [CLS]
    want[1, 1] = 1  # the -> the
    want[2, 2] = want[2, 3] = 0.5  # protein -> mean(pro, ##tein)
    want[3, 4] = want[3, 5] = 0.5  # method -> mean(meth, ##od)
    want[4, 6] = 1  # . -> .
    want[5, 7] = 1  # [SEP] -> [SEP]
    np.testing.assert_array_equal(align(c, s, words=False).dense(), want)
    back = np.zeros((8, 6), np.float32)  # the other way: each piece gets the whole word's state
    for j, i in enumerate([0, 1, 2, 2, 3, 3, 4, 5]):
        back[j, i] = 1
    np.testing.assert_array_equal(align(s, c, words=False).dense(), back)


def test_word_lists_never_mix_words(pair: tuple[BertTokenizer, BertTokenizer]) -> None:
    consumer, source = pair
    words = ["protein", "protein", "the"]
    [c] = encode_documents(consumer, [words], 64)
    [s] = encode_documents(source, [words], 64)
    a = align(c, s, words=True).dense()
    # consumer: [CLS] protein protein the [SEP]; source: [CLS] pro ##tein pro ##tein the [SEP]
    assert a[1].tolist() == [0, 0.5, 0.5, 0, 0, 0, 0] and a[2].tolist() == [0, 0, 0, 0.5, 0.5, 0, 0]
    assert a[3, 5] == 1 and a[0, 0] == 1 and a[4, 6] == 1


def test_identical_tokenizers_align_as_the_identity(tiny_bert_dir: str, texts: list[str]) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_bert_dir)
    for doc in [*texts[:10], texts[0].split()]:
        words = isinstance(doc, list)
        [e] = encode_documents(tok, [doc], 64)
        assert align(e, e, words=words).is_identity()


def test_truncated_source_leaves_zeros_and_aligned_states_average(pair: tuple[BertTokenizer, BertTokenizer]) -> None:
    consumer, source = pair
    text = "the protein method."
    [c] = encode_documents(consumer, [text], 64)
    [s] = encode_documents(source, [text], 5)  # [CLS] the pro ##tein [SEP]: "method." cut off
    a = align(c, s, words=False)
    dense = a.dense()
    assert dense[3].sum() == 0 and dense[4].sum() == 0  # method and . have no source token
    assert dense[5, 4] == 1  # [SEP] still maps to the source's last special token
    states = torch.arange(5 * 3, dtype=torch.float32).reshape(1, 5, 3)
    got = aligned_states([a], states, consumer_len=6)[0]
    torch.testing.assert_close(got, torch.from_numpy(dense) @ states[0])
    torch.testing.assert_close(got[2], (states[0, 2] + states[0, 3]) / 2)


def test_a_document_of_special_tokens_only_maps_start_to_start_and_end_to_end(
    pair: tuple[BertTokenizer, BertTokenizer],
) -> None:
    consumer, source = pair
    [c] = encode_documents(consumer, ["\x00\x01"], 64)  # control characters: the tokenizer drops them
    [s] = encode_documents(source, ["\x00\x01"], 64)
    assert len(c.input_ids) == 2 and all(w < 0 for w in c.word_ids)  # [CLS] [SEP]
    np.testing.assert_array_equal(align(c, s, words=False).dense(), np.eye(2, dtype=np.float32))


@pytest.mark.parametrize("cut", [0, 2])  # the consumer's layers all trained, or those above layer 2
def test_fused_model_with_untrained_fusion_equals_the_plain_consumer(
    tiny_bert_dir: str, texts: list[str], cut: int
) -> None:
    labels = ["a", "b", "c"]
    torch.manual_seed(0)
    model = RecyclingModel(build_task_model(tiny_bert_dir, "classification", labels), ClassificationTask(labels), cut)
    model.eval()
    tok = AutoTokenizer.from_pretrained(tiny_bert_dir)
    ids, mask = pad_ids(encode_documents(tok, texts[:6], 64), tok.pad_token_id)
    with torch.no_grad():
        want = model.forward_text(ids, mask)  # the plain consumer
        fusion = model.add_fusion(source_hidden=48)
        got = model.forward_text(ids, mask, torch.randn(ids.shape[0], ids.shape[1], 48))
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="needs the source states"):
        model.forward_text(ids, mask)
    # a trained fusion layer does use the source
    with torch.no_grad():
        fusion.proj.weight[:, 32:] = 0.1
        moved = model.forward_text(ids, mask, torch.randn(ids.shape[0], ids.shape[1], 48))
    assert not torch.allclose(moved, want)


def test_mlp_fusion_starts_as_the_identity_and_bad_settings_are_named() -> None:
    f = FusionLayer(8, 5, "mlp")
    e = torch.randn(2, 3, 8)
    torch.testing.assert_close(f(e, torch.randn(2, 3, 5)), e)
    with pytest.raises(ConfigError, match="fusion 'concat'"):
        FusionLayer(8, 5, "concat")
