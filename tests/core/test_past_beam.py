"""Documents past the beam (``past_beam="prefix"``): ranked by the score of their longest scored
identifier prefix, checked against a plain-Python beam search that records every scored edge;
the beam's own documents and scores never change."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from npdecode.decoding import search
from npdecode.errors import NpdecodeError
from npdecode.memory import CEMemory, group_vectors
from npdecode.trie import build_trie
from tests.core.helpers import FakeModel, random_sequences

VOCAB = 12


def _parents(trie) -> dict[int, int]:
    parent = {}
    for node in range(trie.n_nodes):
        for child in trie.children(node)[1]:
            parent[int(child)] = node
    return parent


def _reference(model, trie, query: str, beam: int, lp: float, look=None):
    """Beam search without the early stop (it never fires while fewer than k documents are
    finished, the only case that fills): (finished [(node, score)], best scored key per node)."""
    ids, mask = model.tokenize([query])
    enc = model.encode(ids, mask)[0][0, 0].double()
    live = [(0, 0.0, model.start_id)]  # (node, raw score, last id)
    scored: dict[int, float] = {}
    finished: list[tuple[int, float]] = []
    terminal = {int(n) for n in trie.term_nodes}
    step = 0
    while live:
        step += 1
        cands = []
        for node, score, last in live:
            logp = torch.log_softmax(model.table[last].double() + enc, -1)
            edge_ids, children = trie.children(node)
            for t, c in zip(edge_ids.tolist(), children.tolist()):
                s = score + logp[t].item()
                f = s / step**lp if lp else s
                scored[c] = max(scored.get(c, -math.inf), f)
                if c in terminal:
                    finished.append((c, f + (look[c] if look is not None else 0.0)))
                if trie.indptr[c + 1] > trie.indptr[c]:
                    cands.append((s, len(cands), c, t))
        cands.sort(key=lambda x: (-x[0], x[1]))
        live = [(c, s, t) for s, _, c, t in cands[:beam]]
    return sorted(finished, key=lambda x: (-x[1], x[0])), scored


def _reference_fill(model, trie, query, beam, lp, k, look=None):
    finished, scored = _reference(model, trie, query, beam, lp, look)
    parent = _parents(trie)
    done = {n for n, _ in finished}
    extra = []
    for node in (int(n) for n in trie.term_nodes):
        if node in done:
            continue
        a = node
        while a not in scored:  # the deepest scored prefix (the first ids are all scored)
            a = parent[a]
        extra.append((node, scored[a] + (look[node] if look is not None else 0.0)))
    extra.sort(key=lambda x: (-x[1], x[0]))
    return finished[:k], extra[: max(0, k - len(finished))]


def _nodes(trie, hits):
    """(value, score) hits -> terminal nodes (every value of these tries has its own terminal)."""
    node_of = {int(v): int(n) for n, lo, hi in zip(trie.term_nodes, trie.term_ptr[:-1], trie.term_ptr[1:])
               for v in trie.term_values[lo:hi]}  # fmt: skip
    return [(node_of[v], s) for v, s in hits]


def _case(seed: int, n: int = 40):
    seqs = random_sequences(n, vocab=VOCAB, eos=1, seed=seed, max_len=5)
    return seqs, build_trie(seqs, id_space="token"), FakeModel(VOCAB, seed=seed)


@pytest.mark.parametrize("lp", [0.0, 1.0])
@pytest.mark.parametrize("beam", [1, 3])
@pytest.mark.parametrize("seed", range(6))
def test_past_the_beam_equals_the_longest_scored_prefix_rule(seed, beam, lp):
    seqs, trie, model = _case(seed)
    k = 25
    for query in ("q", "another query"):
        got = _nodes(trie, search(model, trie, [query], k=k, beam=beam, length_penalty=lp)[0])
        finished, extra = _reference_fill(model, trie, query, beam, lp, k)
        assert len(got) == min(k, len(seqs)) and len({n for n, _ in got}) == len(got)
        head, tail = got[: len(finished)], got[len(finished) :]
        assert [n for n, _ in head] == [n for n, _ in finished]
        np.testing.assert_allclose([s for _, s in head], [s for _, s in finished], atol=1e-4)
        # keys may tie (documents under one scored prefix): compare the keys in order, and the
        # documents as sets per key
        want_keys = np.array([s for _, s in extra])
        shift = min(0.0, finished[-1][1] - want_keys[0] - 1e-3) if finished else 0.0
        np.testing.assert_allclose([s for _, s in tail], want_keys + shift, atol=1e-4)
        assert all(a >= b for (_, a), (_, b) in itertools.pairwise(got))  # scores never rise down the list
        if finished:
            assert tail[0][1] < head[-1][1]  # strictly below the last finished document


@pytest.mark.parametrize("seed", range(4))
def test_the_beam_documents_are_those_of_the_one_beam_search(seed):
    seqs, trie, model = _case(seed, n=60)
    for lp in (0.0, 1.0):
        alone = search(model, trie, ["q", "r", "s"], k=10, beam=4, length_penalty=lp, past_beam="none")
        for k in (10, 30, 60):
            filled = search(model, trie, ["q", "r", "s"], k=k, beam=4, length_penalty=lp)
            for a, f in zip(alone, filled):
                assert f[: len(a)] == a  # same documents, same scores, same order
                assert len(f) == min(k, len(seqs))
            widened = search(model, trie, ["q", "r", "s"], k=k, beam=4, length_penalty=lp, past_beam="widen")
            assert [len(w) for w in widened] == [len(f) for f in filled]


def test_with_the_memory_each_document_adds_its_own_memory_score():
    _, trie, model = _case(3, n=30)
    rng = np.random.default_rng(3)
    vectors = group_vectors(rng.normal(size=(40, VOCAB)).astype(np.float32), [[2 + i, 3 + i] for i in range(30)])
    memory = CEMemory(trie, vectors, weight=2.0)
    ids, mask = model.tokenize(["q"])
    look = memory.lookahead(*model.encode(ids, mask))[0].double().numpy()
    got = _nodes(trie, search(model, trie, ["q"], k=20, beam=2, length_penalty=1.0, memory=memory)[0])
    finished, extra = _reference_fill(model, trie, "q", 2, 1.0, 20, look=look)
    assert [n for n, _ in got[: len(finished)]] == [n for n, _ in finished]
    want = np.array([s for _, s in extra])
    shift = min(0.0, finished[-1][1] - want[0] - 1e-3)
    np.testing.assert_allclose([s for _, s in got[len(finished) :]], want + shift, atol=1e-4)
    assert [n for n, _ in got[len(finished) :]] == [n for n, _ in extra]  # memory scores break the ties


def test_k_above_the_corpus_returns_every_document_once():
    seqs, trie, model = _case(1, n=20)
    got = search(model, trie, ["q"], k=1000, beam=2)[0]
    assert sorted(v for v, _ in got) == list(range(len(seqs)))  # k above the corpus: every document once


def test_unknown_rule_is_an_error():
    _, trie, model = _case(0, n=5)
    with pytest.raises(NpdecodeError, match="past_beam"):
        search(model, trie, ["q"], k=3, beam=1, past_beam="more")


def test_the_progress_bar_counts_queries(monkeypatch):
    """Every search reports to a bar over queries (tqdm shows it after 3 s; q/s is its rate)."""
    import tqdm.auto

    bars = []

    class Recorder:
        def __init__(self, total, desc, unit, delay, disable):
            self.total, self.desc, self.unit, self.done, self.closed = total, desc, unit, 0, False
            bars.append(self)

        def update(self, n):
            self.done += n

        def close(self):
            self.closed = True

    monkeypatch.setattr(tqdm.auto, "tqdm", Recorder)
    _, trie, model = _case(2, n=30)
    queries = [f"q{i}" for i in range(7)]
    search(model, trie, queries, k=5, beam=2, batch_size=3, progress=True)
    assert [(b.total, b.done, b.unit, b.closed) for b in bars] == [(7, 7, "q", True)]
    bars.clear()
    search(model, trie, queries, k=30, beam=2, batch_size=3, past_beam="widen", progress=True)
    assert bars[0].desc == "search" and bars[1].desc.startswith("widen to beam")  # one bar per widening pass
    assert all(b.done == b.total and b.closed for b in bars)
