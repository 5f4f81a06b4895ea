"""Decoding dtypes: bf16 decoding agrees with fp32 on tiny models; dtype resolution and errors."""

from __future__ import annotations

import copy

import pytest
import torch

from npdecode.backbone import load_backbone
from npdecode.decoding import bf16_supported, cast_for_decoding, resolve_dtype, search
from npdecode.errors import NpdecodeError
from npdecode.trie import build_trie
from tests.core.helpers import make_np_model, random_sequences

QUERIES = ["alpha beta", "river castle gold", "storm"]


@pytest.mark.parametrize("family", ["t5", "bart"])
def test_bf16_top_lists_match_fp32(family, request):
    """bf16 weights + CE table: same top lists as fp32 (scores within bf16 rounding), still trie paths."""
    model = make_np_model(load_backbone(request.getfixturevalue(f"{family}_dir")), n_rows=30, scale=1.0)
    seqs = random_sequences(12, vocab=30, eos=model.eos_id, seed=1)
    trie = build_trie(seqs, id_space="ce")
    fp32 = search(model, trie, QUERIES, k=5, beam=12)
    low = copy.deepcopy(model)
    bf16 = search(low, trie, QUERIES, k=5, beam=12, dtype="bf16")
    assert low.ce.dtype == torch.bfloat16 and low.backbone.model.dtype == torch.bfloat16
    assert low.log_scale.dtype == torch.float32
    for a, b in zip(fp32, bf16):
        assert {v for v, _ in b} <= set(range(len(seqs)))
        assert len({v for v, _ in a} & {v for v, _ in b}) >= 4  # top-5 overlap >= 0.8
        sa, sb = dict(a), dict(b)
        for v in set(sa) & set(sb):
            assert sb[v] == pytest.approx(sa[v], abs=0.1 + 0.02 * abs(sa[v]))
        assert [s for _, s in b] == sorted((s for _, s in b), reverse=True)


def test_dtype_resolution():
    assert resolve_dtype("fp32", "cpu") is torch.float32
    assert resolve_dtype("bf16", "cpu") is torch.bfloat16
    assert resolve_dtype("auto", "cpu") is (torch.bfloat16 if bf16_supported("cpu") else torch.float32)
    with pytest.raises(NpdecodeError, match="fp32, bf16, auto"):
        resolve_dtype("fp8", "cpu")


def test_cast_keeps_fp32_model_for_fp32(t5_dir):
    model = make_np_model(load_backbone(t5_dir), n_rows=10)
    before = model.ce.detach().clone()
    assert cast_for_decoding(model, "fp32") is model
    assert model.ce.dtype == torch.float32 and torch.equal(model.ce.detach(), before)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_bf16_matches_cpu_fp32(t5_dir):
    """On a GPU, bf16 decoding (fp32-output CE product) keeps the fp32 CPU top lists."""
    model = make_np_model(load_backbone(t5_dir), n_rows=30, scale=1.0)
    seqs = random_sequences(12, vocab=30, eos=model.eos_id, seed=1)
    trie = build_trie(seqs)
    cpu = search(model, trie, QUERIES, k=5, beam=12)
    gpu = search(copy.deepcopy(model).to("cuda"), trie, QUERIES, k=5, beam=12, dtype="bf16")
    for a, b in zip(cpu, gpu):
        assert len({v for v, _ in a} & {v for v, _ in b}) >= 4
