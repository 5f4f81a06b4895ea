"""The fused CE product + normalizer of the decoder's hot path equals ``step`` + ``logsumexp``."""

from __future__ import annotations

import pytest
import torch

from npdecode.backbone import load_backbone
from npdecode.decoding import search
from npdecode.model import _lse_chunk
from npdecode.trie import build_trie
from tests.core.helpers import make_np_model, random_sequences


@pytest.mark.parametrize("scale", [3.0, 300.0])  # 300: logits spread over thousands (exp underflows)
def test_fused_step_equals_step_and_logsumexp(t5_dir, scale):
    """Several CE chunks plus a ragged tail: same logits and float64-exact normalizer."""
    model = make_np_model(load_backbone(t5_dir), n_rows=2 * _lse_chunk(2) + 37, scale=scale)
    ids, mask = model.tokenize(["alpha beta", "storm"])
    with torch.no_grad():
        enc, enc_mask = model.encode(ids, mask)
        state = model.init_state(enc, enc_mask)
        prev = torch.tensor([model.start_id, 5])
        want, _ = model.step(prev, state)
        state = model.init_state(enc, enc_mask)
        got, lse, _ = model._step_normalized(prev, state)
    assert got.shape == want.shape and got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4 * scale)
    torch.testing.assert_close(lse.double(), torch.logsumexp(want.double(), -1), rtol=1e-6, atol=1e-5)


def test_search_with_fused_path_equals_public_step(t5_dir):
    """Beam search through the fused path and through a wrapped public ``step`` agree."""
    n_rows = _lse_chunk(3 * 5) + 5  # 3 queries x beam 5: a full block and a ragged one
    model = make_np_model(load_backbone(t5_dir), n_rows=n_rows)
    seqs = random_sequences(40, vocab=n_rows, eos=model.eos_id, seed=3)
    trie = build_trie(seqs)
    queries = ["alpha beta", "river castle gold", "storm"]
    fused = search(model, trie, queries, k=5, beam=5)
    calls = []
    public = model.step
    model.step = lambda prev, state: (calls.append(1), public(prev, state))[1]
    model.fused_normalizer = False  # the explicit switch to the plain path
    plain = search(model, trie, queries, k=5, beam=5)
    del model.step, model.fused_normalizer
    assert calls  # the wrapped public step really ran
    for a, b in zip(fused, plain):
        assert [v for v, _ in a] == [v for v, _ in b]
        assert max(abs(x - y) for (_, x), (_, y) in zip(a, b)) < 1e-3
