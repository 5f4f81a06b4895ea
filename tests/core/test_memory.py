"""The CE memory's lookahead: H against brute force over the trie, and beam search with it
against exhaustive scoring of ``score / len**lp + weight * m(doc)`` (pruning included)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from npdecode.decoding import search
from npdecode.errors import NpdecodeError
from npdecode.memory import CEMemory, group_vectors
from npdecode.trie import build_trie
from tests.core.helpers import FakeModel, random_sequences

VOCAB = 12


def _case(seed: int, n: int = 16, shared: bool = False):
    """Random sequences (EOS = 1), their groups' memory vectors (dim = VOCAB, FakeModel's enc width);
    with ``shared`` two sequences map to one group and one group to two terminals' worth of values."""
    seqs = random_sequences(n, vocab=VOCAB, eos=1, seed=seed, max_len=4)
    values = list(range(len(seqs)))
    if shared:
        values[1] = values[0]  # two paths, one group
    rng = np.random.default_rng(seed)
    vectors = group_vectors(rng.normal(size=(40, VOCAB)).astype(np.float32), [[2 + i, 3 + i] for i in range(n)])
    return seqs, values, vectors


def _brute_h(trie, seqs, values, m):
    """H[n] = max m[group] over the sequences whose path passes through node n."""
    h = np.full(trie.n_nodes, -np.inf)
    for s, v in zip(seqs, values):
        for i in range(len(s) + 1):
            node = trie.walk(s[:i])
            h[node] = max(h[node], m[v])
    return h


@pytest.mark.parametrize("seed", range(6))
def test_lookahead_is_the_best_memory_score_below_each_node(seed):
    seqs, values, vectors = _case(seed, shared=seed % 2 == 1)
    trie = build_trie(seqs, values)
    memory = CEMemory(trie, vectors, weight=2.5)
    enc = torch.randn(3, 4, VOCAB, generator=torch.Generator().manual_seed(seed))
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])
    m = memory.group_scores(enc, mask).numpy()
    # the query side: the mean over real tokens, normalised
    mean = (enc * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    want_m = (torch.nn.functional.normalize(mean, dim=-1) @ torch.from_numpy(vectors).T).numpy()
    np.testing.assert_allclose(m, want_m, atol=1e-6)
    h = memory.lookahead(enc, mask).numpy()
    for b in range(3):
        np.testing.assert_allclose(h[b], 2.5 * _brute_h(trie, seqs, values, m[b]), atol=1e-6)


def _brute_search(model, memory, query, seqs, values, lp):
    ids, mask = model.tokenize([query])
    enc, enc_mask = model.encode(ids, mask)
    m = memory.group_scores(enc, enc_mask)[0].double().numpy()
    best: dict[int, float] = {}
    for s, v in zip(seqs, values):
        dec = model.score(query, s)
        total = (dec / len(s) ** lp if lp else dec) + memory.weight * m[v]
        best[v] = max(best.get(v, -np.inf), total)
    return sorted(best.items(), key=lambda x: (-x[1], x[0]))


@pytest.mark.parametrize("lp", [0.0, 1.0])
@pytest.mark.parametrize("seed", range(8))
def test_search_with_memory_equals_exhaustive(seed, lp):
    """Full beam: every document scores decoder + weight * m exactly; k below the corpus with lp 0
    exercises the early stop, which stays exact because H only falls along a path."""
    seqs, values, vectors = _case(seed)
    trie = build_trie(seqs, values, id_space="token")
    model = FakeModel(VOCAB, seed=seed)
    memory = CEMemory(trie, vectors, weight=3.0)
    for query in ("q", "another query"):
        want = _brute_search(model, memory, query, seqs, values, lp)
        for k in (1, 3, len(seqs)):
            got = search(model, trie, [query], k=k, beam=len(seqs), length_penalty=lp, memory=memory, past_beam="none")[
                0
            ]
            assert [v for v, _ in got] == [v for v, _ in want[:k]]
            assert max(abs(a - b) for (_, a), (_, b) in zip(got, want)) < 1e-4


@pytest.mark.parametrize("seed", range(8))
def test_the_lookahead_finds_the_best_memory_document_with_a_beam_of_one(seed):
    """With a decoder that prefers nothing (uniform logits) and lp 1, every path scores -log V per
    step: the exact max below each node leads a beam of one straight to the best-memory document,
    which plain decoding (no memory) finds only by chance."""
    seqs, values, vectors = _case(seed, n=24)
    trie = build_trie(seqs, values, id_space="token")
    model = FakeModel(VOCAB, seed=seed, logits_fn=torch.zeros_like)
    memory = CEMemory(trie, vectors, weight=1.0)
    ids, mask = model.tokenize(["q"])
    best = int(memory.group_scores(*model.encode(ids, mask)).argmax())
    got = search(model, trie, ["q"], k=1, beam=1, length_penalty=1.0, memory=memory, past_beam="none")[0]
    assert got[0][0] == best


def test_weight_zero_changes_nothing_and_bad_weights_are_errors():
    seqs, values, vectors = _case(0)
    trie = build_trie(seqs, values, id_space="token")
    model = FakeModel(VOCAB, seed=0)
    plain = search(model, trie, ["q"], k=5, beam=4, length_penalty=1.0)
    zero = search(model, trie, ["q"], k=5, beam=4, length_penalty=1.0, memory=CEMemory(trie, vectors, 0.0))
    assert plain == zero
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(NpdecodeError, match="memory weight"):
            CEMemory(trie, vectors, bad)
    with pytest.raises(NpdecodeError, match="groups"):
        CEMemory(trie, vectors[:3], 1.0)


def test_group_vectors_are_normalised_path_means():
    ce = np.arange(12, dtype=np.float32).reshape(4, 3)
    out = group_vectors(ce, [[0, 2], [3], []])
    want = (ce[0] + ce[2]) / 2
    np.testing.assert_allclose(out[0], want / np.linalg.norm(want), rtol=1e-6)
    np.testing.assert_allclose(out[1], ce[3] / np.linalg.norm(ce[3]), rtol=1e-6)
    assert not out[2].any()
