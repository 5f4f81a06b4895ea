"""Constrained beam search: oracle vs exhaustive scoring, trie-path property, -inf, k > beam."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from npdecode.backbone import load_backbone
from npdecode.decoding import search
from npdecode.errors import NpdecodeError
from npdecode.model import NpModel, VanillaModel
from npdecode.trie import build_trie
from tests.core.helpers import FakeModel, exhaustive, make_np_model, random_sequences

QUERIES = ["alpha beta", "river castle gold", "storm"]


def _close_lists(got, want, tol=1e-4):
    assert [v for v, _ in got] == [v for v, _ in want]
    assert max(abs(a - b) for (_, a), (_, b) in zip(got, want)) < tol


@pytest.mark.parametrize("family", ["t5", "t5_gated", "bart", "bert2bert"])
def test_np_ce_trie_full_beam_equals_exhaustive(family, request):
    bb = load_backbone(request.getfixturevalue(f"{family}_dir"))
    model = make_np_model(bb, n_rows=30)
    seqs = random_sequences(12, vocab=30, eos=model.eos_id, seed=1)
    trie = build_trie(seqs, id_space="ce")
    results = search(model, trie, QUERIES, k=12, beam=12, batch_size=2)
    for q, got in zip(QUERIES, results):
        _close_lists(got, exhaustive(model, q, seqs))


def test_length_penalty_full_beam_equals_exhaustive(t5_dir):
    model = make_np_model(load_backbone(t5_dir), n_rows=30)
    seqs = random_sequences(10, vocab=30, eos=model.eos_id, seed=2, max_len=4)
    trie = build_trie(seqs)
    for q, got in zip(QUERIES, search(model, trie, QUERIES, k=10, beam=10, length_penalty=1.0)):
        _close_lists(got, exhaustive(model, q, seqs, length_penalty=1.0))


def test_np_token_trie_is_logsumexp_over_ce_rows(t5_dir):
    """Token-id trie over an Np model: brute force = sum over steps of log Σ_rows p(row)."""
    model = make_np_model(load_backbone(t5_dir), n_rows=30)
    tid = model.ce_token_ids.tolist()
    tokens = sorted(set(tid[2:]))
    g = torch.Generator().manual_seed(4)
    seqs = []
    while len(seqs) < 8:
        s = [
            tokens[i]
            for i in torch.randint(0, len(tokens), (int(torch.randint(1, 4, (1,), generator=g)),), generator=g)
        ] + [tid[1]]
        if s not in seqs:
            seqs.append(s)
    trie = build_trie(seqs, id_space="token")
    rows_of = {t: [r for r, x in enumerate(tid) if x == t] for t in set(tid)}
    query = "alpha beta"
    ids, mask = model.tokenize([query])
    brute = []
    with torch.no_grad():
        for i, s in enumerate(seqs):
            prev, total = [model.start_id], 0.0
            for t in s:  # next input = the token's most likely CE row, as the decoder does
                lp = torch.log_softmax(model(ids, mask, torch.tensor([prev])).double()[0, -1], -1)
                rows = torch.tensor(rows_of[t] if t != tid[1] else [1])
                total += torch.logsumexp(lp[rows], 0).item()
                prev.append(int(rows[lp[rows].argmax()]))
            brute.append((i, total))
    brute.sort(key=lambda x: (-x[1], x[0]))
    _close_lists(search(model, trie, [query], k=8, beam=8)[0], brute)


def test_vanilla_token_trie_equals_exhaustive(bart_dir):
    model = VanillaModel(load_backbone(bart_dir))
    seqs = random_sequences(10, vocab=60, eos=model.eos_id, seed=3, lo=4)
    trie = build_trie(seqs, id_space="token")
    for q, got in zip(QUERIES, search(model, trie, QUERIES, k=10, beam=10)):
        _close_lists(got, exhaustive(model, q, seqs))


@settings(max_examples=40, deadline=None)
@given(
    n_docs=st.integers(1, 25),
    vocab=st.integers(4, 20),
    beam=st.integers(1, 6),
    k=st.integers(1, 30),
    seed=st.integers(0, 10_000),
    shared=st.booleans(),
)
def test_every_result_is_a_stored_path(n_docs, vocab, beam, k, seed, shared):
    """Property: results are stored documents, no duplicates, best first, k found when possible."""
    model = FakeModel(vocab, seed=seed)
    rng = np.random.default_rng(seed)
    seqs = [rng.integers(2, vocab, rng.integers(1, 5)).tolist() + [1] for _ in range(n_docs)]
    if shared:  # several documents behind one identifier
        seqs[-1] = seqs[0]
    trie = build_trie(seqs, id_space="token")
    widened = search(model, trie, ["a", "b"], k=k, beam=beam, past_beam="widen")
    filled = search(model, trie, ["a", "b"], k=k, beam=beam)  # past the beam: prefix scores
    alone = search(model, trie, ["a", "b"], k=k, beam=beam, past_beam="none")
    for q, got, fill, beam_only in zip(["a", "b"], widened, filled, alone):
        for hits in (got, fill):
            values = [v for v, _ in hits]
            assert len(values) == len(set(values)) == min(k, n_docs)
            scores = [s for _, s in hits]
            assert scores == sorted(scores, reverse=True)
        for v, s in got:  # widening decodes every document it returns: exact scores
            assert s == pytest.approx(model.score(q, seqs[v]), abs=1e-4)
        assert fill[: len(beam_only)] == beam_only


def test_all_minus_inf_stays_inside_the_trie():
    """Every allowed score -inf (the HF leak case): results are still stored paths only."""
    seqs = [[3, 4, 1], [3, 5, 1], [6, 1], [7, 8, 9, 1]]
    trie = build_trie(seqs, id_space="token")
    allowed = {1, 3, 4, 5, 6, 7, 8, 9}

    def poison(logits):  # disallowed ids get huge scores, allowed ones -inf
        out = torch.full_like(logits, 50.0)
        out[:, sorted(allowed)] = float("-inf")
        return out

    got = search(FakeModel(12, logits_fn=poison), trie, ["q"], k=10, beam=2)[0]
    assert sorted(v for v, _ in got) == [0, 1, 2, 3]
    assert all(s == float("-inf") for _, s in got)
    nan_model = FakeModel(12, logits_fn=lambda x: torch.full_like(x, float("nan")))
    assert sorted(v for v, _ in search(nan_model, trie, ["q"], k=10, beam=1)[0]) == [0, 1, 2, 3]


def test_single_child_chain_and_k_beyond_beam():
    seqs = [[2, 3, 4, 5, 6, 1]]  # one path: every node has a single child
    model = FakeModel(8, seed=5)
    got = search(model, build_trie(seqs, id_space="token"), ["x"], k=3, beam=1)[0]
    assert [v for v, _ in got] == [0]
    assert got[0][1] == pytest.approx(model.score("x", seqs[0]), abs=1e-5)
    # equal-length identifiers: one beam reaches one leaf, so k > beam needs widening
    seqs = [[a, b, 1] for a in range(2, 6) for b in range(2, 6)]
    trie = build_trie(seqs, id_space="token")
    got = search(model, trie, ["x"], k=10, beam=2)[0]
    brute = sorted(((i, model.score("x", s)) for i, s in enumerate(seqs)), key=lambda x: -x[1])
    assert len(got) == 10
    assert {v for v, _ in got} <= set(range(16))
    assert search(model, trie, ["x"], k=10, beam=2, past_beam="none")[0].__len__() <= 10
    full = search(model, trie, ["x"], k=16, beam=16)[0]
    assert [v for v, _ in full] == [v for v, _ in brute]


def test_mode_mismatch_is_an_error():
    with pytest.raises(NpdecodeError, match="CE-id trie"):
        search(FakeModel(5), build_trie([[2, 1]], id_space="ce"), ["q"], k=1, beam=1)
    with pytest.raises(NpdecodeError, match="at least 1"):
        search(FakeModel(5), build_trie([[2, 1]], id_space="token"), ["q"], k=0, beam=1)


def test_np_model_type_is_detected(t5_dir):
    model = make_np_model(load_backbone(t5_dir))
    assert isinstance(model, NpModel) and hasattr(model, "ce_token_ids")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_search_equals_cpu(t5_dir):
    """On a GPU the CSR trie and masks live on the device; results match the CPU run."""
    model = make_np_model(load_backbone(t5_dir), n_rows=30)
    seqs = random_sequences(12, vocab=30, eos=model.eos_id, seed=1)
    trie = build_trie(seqs)
    cpu = search(model, trie, QUERIES, k=12, beam=4)
    gpu = search(model.to("cuda"), trie, QUERIES, k=12, beam=4)
    for a, b in zip(cpu, gpu):
        assert [v for v, _ in a] == [v for v, _ in b]
        assert max(abs(x - y) for (_, x), (_, y) in zip(a, b)) < 1e-3
    model.to("cpu")


def test_np_group_mode_equals_best_row_sequence_by_brute_force(t5_dir):
    """Group mode (the authors' default): any CE row of an allowed token may be emitted and a
    document scores its best row sequence. Brute force: every row choice, teacher-forced."""
    import itertools

    model = make_np_model(load_backbone(t5_dir), n_rows=30, seed=3)
    tid = model.ce_token_ids.tolist()
    rows_of = {t: [r for r, x in enumerate(tid) if x == t] for t in set(tid[2:])}
    tokens = sorted(rows_of)
    g = torch.Generator().manual_seed(5)
    seqs: list[list[int]] = []
    while len(seqs) < 7:
        n = int(torch.randint(1, 4, (1,), generator=g))
        s = [tokens[i] for i in torch.randint(0, len(tokens), (n,), generator=g).tolist()] + [tid[1]]
        if s not in seqs:
            seqs.append(s)
    seqs.append([seqs[0][0], tid[1]] if len(seqs[0]) > 2 else seqs[0][:1] + [tokens[0], tid[1]])  # a shared prefix
    trie = build_trie(seqs, id_space="token")
    for query in QUERIES:
        choices = [
            (i, list(rows) + [1])
            for i, s in enumerate(seqs)
            for rows in itertools.product(*(rows_of[t] for t in s[:-1]))
        ]
        scored = exhaustive(model, query, [c for _, c in choices])
        best: dict[int, float] = {}
        for j, score in scored:
            doc = choices[j][0]
            best[doc] = max(best.get(doc, float("-inf")), score)
        want = sorted(best.items(), key=lambda x: (-x[1], x[0]))
        got = search(model, trie, [query], k=len(seqs), beam=10_000, group=True)[0]
        _close_lists(got, want)
        short = search(model, trie, [query], k=3, beam=10_000, group=True)[0]
        _close_lists(short, want[:3])  # merged duplicates do not crowd out documents
    with pytest.raises(NpdecodeError, match="group"):
        search(model, build_trie([[c + 2 for c in s] for s in seqs]), ["q"], group=True)


@pytest.mark.parametrize("seed", range(24))
def test_early_stop_with_k_below_the_corpus_equals_exhaustive_top_k(seed):
    """k < #docs with a full beam: the only thing that can differ from exhaustive top-k is the
    early stop (live hypotheses dropped once they cannot beat the k-th finished score). Short
    identifiers finish early and long ones share long prefixes, so it fires on most seeds."""
    rng = np.random.default_rng(seed)
    vocab = 12
    stems = [rng.integers(2, vocab, 4).tolist() for _ in range(3)]
    seqs = []
    for i in range(18):
        stem = stems[i % 3]
        length = int(rng.integers(1, 7))
        seqs.append((stem + rng.integers(2, vocab, 4).tolist())[:length] + [1])
    seqs = [list(s) for s in dict.fromkeys(map(tuple, seqs))]  # distinct paths
    model = FakeModel(vocab, seed=seed)
    trie = build_trie(seqs, id_space="token")
    brute = sorted(((i, model.score("q", s)) for i, s in enumerate(seqs)), key=lambda x: (-x[1], x[0]))
    for k in (1, 2, 3):
        got = search(model, trie, ["q"], k=k, beam=len(seqs))[0]
        assert [v for v, _ in got] == [v for v, _ in brute[:k]]
        assert max(abs(a - b) for (_, a), (_, b) in zip(got, brute)) < 1e-4


def test_early_stop_fires_in_the_k_below_corpus_cases(monkeypatch):
    """The cases above do exercise the pruning: some live hypotheses are dropped by it."""
    from npdecode import decoding

    dropped = []
    real = decoding._kth_best

    def spy(query, score, n_queries, k):
        kth = real(query, score, n_queries, k)
        dropped.append(bool(torch.isfinite(kth).any()))
        return kth

    monkeypatch.setattr(decoding, "_kth_best", spy)
    for seed in range(24):
        test_early_stop_with_k_below_the_corpus_equals_exhaustive_top_k(seed)
    assert sum(dropped) > 10
