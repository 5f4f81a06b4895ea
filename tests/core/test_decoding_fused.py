"""The fused CE product + normalizer of the decoder's hot path equals ``step`` + ``logsumexp``."""

from __future__ import annotations

import torch

from npdecode.backbone import load_backbone
from npdecode.decoding import search
from npdecode.model import _LSE_CHUNK
from npdecode.trie import build_trie
from tests.core.helpers import make_np_model, random_sequences


def test_fused_step_equals_step_and_logsumexp(t5_dir):
    """Several CE chunks plus a ragged tail: same logits and float64-exact normalizer."""
    model = make_np_model(load_backbone(t5_dir), n_rows=2 * _LSE_CHUNK + 37)
    ids, mask = model.tokenize(["alpha beta", "storm"])
    with torch.no_grad():
        enc, enc_mask = model.encode(ids, mask)
        state = model.init_state(enc, enc_mask)
        prev = torch.tensor([model.start_id, 5])
        want, _ = model.step(prev, state)
        state = model.init_state(enc, enc_mask)
        got, lse, _ = model._step_normalized(prev, state)
    assert got.shape == want.shape and got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(lse.double(), torch.logsumexp(want.double(), -1), rtol=1e-6, atol=1e-5)


def test_search_with_fused_path_equals_public_step(t5_dir):
    """Beam search through the fused path and through a wrapped public ``step`` agree."""
    model = make_np_model(load_backbone(t5_dir), n_rows=_LSE_CHUNK + 5)
    seqs = random_sequences(40, vocab=_LSE_CHUNK + 5, eos=model.eos_id, seed=3)
    trie = build_trie(seqs)
    queries = ["alpha beta", "river castle gold", "storm"]
    fused = search(model, trie, queries, k=5, beam=5)
    calls = []
    public = model.step
    model.step = lambda prev, state: (calls.append(1), public(prev, state))[1]
    plain = search(model, trie, queries, k=5, beam=5)
    del model.step
    assert calls  # the wrapped public step really ran
    for a, b in zip(fused, plain):
        assert [v for v, _ in a] == [v for v, _ in b]
        assert max(abs(x - y) for (_, x), (_, y) in zip(a, b)) < 1e-3
