"""Tokenizer union / base with distinct vocabularies: every vocabulary-axis tensor is permuted
and filled consistently (embeddings, lm_head, BART's final_logits_bias) and the result loads."""

from __future__ import annotations

import json
import random

import pytest
import torch

from npdecode.merge.api import merge_models
from tests.merge.helpers import load_hf, logits_of, read_tensors
from tests.tiny_models import save_checkpoint

SHARED = [f"s{i}" for i in range(20)]


@pytest.fixture(scope="module")
def two_vocabs(tmp_path_factory):
    root = tmp_path_factory.mktemp("vocab")
    specials = ["<pad>", "</s>", "<unk>"]
    va = specials + SHARED + [f"a{i}" for i in range(10)]
    shuffled = SHARED[:]
    random.Random(0).shuffle(shuffled)
    vb = specials + [f"b{i}" for i in range(7)] + shuffled  # same tokens at other ids, plus new ones
    made = {}
    for family in ("bart", "t5v11"):
        made[family] = (
            save_checkpoint(family, root / f"{family}-a", 0, vocab=va),
            save_checkpoint(family, root / f"{family}-b", 1, vocab=vb),
            va, vb,
        )  # fmt: skip
    return made


def _rows(tensor: torch.Tensor, axis: int) -> torch.Tensor:
    return tensor.movedim(axis, 0)


@pytest.mark.parametrize("family", ["bart", "t5v11"])
def test_union_tokenizer_aligns_every_vocab_tensor(family, two_vocabs, tmp_path):
    from transformers import AutoTokenizer

    a, b, va, vb = two_vocabs[family]
    recipe = {
        "merge_method": "linear",
        "base_model": str(a),
        "models": [{"model": str(a), "parameters": {"weight": 0.3}}, {"model": str(b), "parameters": {"weight": 0.7}}],
        "tokenizer": {"source": "union", "pad_to_multiple_of": 8},
    }
    out = tmp_path / "out"
    merge_models(recipe, out)
    tok = AutoTokenizer.from_pretrained(str(out))
    vocab = tok.get_vocab()
    assert set(vocab) == set(va) | set(vb)
    assert all(vocab[t] == i for i, t in enumerate(va))  # the base's ids are kept
    rows = -(-len(vocab) // 8) * 8
    assert json.loads((out / "config.json").read_text())["vocab_size"] == rows

    merged, ta, tb = read_tensors(out), read_tensors(a), read_tensors(b)
    ida, idb = {t: i for i, t in enumerate(va)}, {t: i for i, t in enumerate(vb)}
    vocab_tensors = {
        "bart": {"model.shared.weight": 0, "final_logits_bias": 1},
        "t5v11": {"shared.weight": 0, "lm_head.weight": 0, "encoder.embed_tokens.weight": 0},
    }[family]
    for name, axis in vocab_tensors.items():
        out_rows, ra, rb = _rows(merged[name], axis), _rows(ta[name], axis), _rows(tb[name], axis)
        assert out_rows.shape[0] == rows
        for token, i in vocab.items():
            if token in ida and token in idb:
                expected = 0.3 * ra[ida[token]] + 0.7 * rb[idb[token]]
            elif token in ida:
                expected = ra[ida[token]]  # the base's row, for every model
            else:
                expected = rb[idb[token]]  # the only model that has it
            torch.testing.assert_close(out_rows[i], expected, msg=f"{name} row of {token!r}")
        assert torch.count_nonzero(out_rows[len(vocab) :]) == 0  # padding rows
    model = load_hf(family, out)
    assert torch.isfinite(logits_of(family, model, vocab=len(vocab))).all()


def test_base_tokenizer_permutes_other_model_rows(two_vocabs, tmp_path):
    a, b, va, vb = two_vocabs["bart"]
    recipe = {
        "merge_method": "linear",
        "base_model": str(a),
        "models": [{"model": str(a), "parameters": {"weight": 0.5}}, {"model": str(b), "parameters": {"weight": 0.5}}],
        "tokenizer_source": "base",
    }
    out = tmp_path / "out"
    merge_models(recipe, out)
    merged, ta, tb = read_tensors(out), read_tensors(a), read_tensors(b)
    emb = merged["model.shared.weight"]
    assert emb.shape[0] == len(va)
    idb = {t: i for i, t in enumerate(vb)}
    for i, token in enumerate(va):
        if token in idb:
            expected = 0.5 * ta["model.shared.weight"][i] + 0.5 * tb["model.shared.weight"][idb[token]]
        else:
            expected = ta["model.shared.weight"][i]
        torch.testing.assert_close(emb[i], expected)


def test_vocab_mismatch_without_tokenizer_setting_is_an_error(two_vocabs, tmp_path):
    from npdecode.errors import NpdecodeError

    a, b, _, _ = two_vocabs["bart"]
    recipe = {
        "merge_method": "linear",
        "models": [{"model": str(a), "parameters": {"weight": 1}}, {"model": str(b), "parameters": {"weight": 1}}],
    }
    with pytest.raises(NpdecodeError, match="vocabulary sizes differ"):
        merge_models(recipe, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_per_token_sources_zero_and_model_token(two_vocabs, tmp_path):
    a, b, _, vb = two_vocabs["bart"]
    recipe = {
        "merge_method": "linear",
        "base_model": str(a),
        "models": [{"model": str(a), "parameters": {"weight": 0.5}}, {"model": str(b), "parameters": {"weight": 0.5}}],
        "tokenizer": {"source": "union", "tokens": {
            "a0": {"source": {"kind": "zero"}},
            "s1": {"source": {"kind": "model_token", "model": str(b), "token": "s2"}, "force": True},
            "b3": {"source": str(b)},
        }},
    }  # fmt: skip
    out = tmp_path / "out"
    merge_models(recipe, out)
    from transformers import AutoTokenizer

    vocab = AutoTokenizer.from_pretrained(str(out)).get_vocab()
    emb, eb = read_tensors(out)["model.shared.weight"], read_tensors(b)["model.shared.weight"]
    idb = {t: i for i, t in enumerate(vb)}
    assert torch.count_nonzero(emb[vocab["a0"]]) == 0
    torch.testing.assert_close(emb[vocab["s1"]], eb[idb["s2"]])  # forced for every model
    torch.testing.assert_close(emb[vocab["b3"]], eb[idb["b3"]])
