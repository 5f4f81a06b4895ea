"""Approximate normalizer (FAISS IVF top-k): exact when it probes everything, an upper bound on
scores otherwise, never a path outside the trie, clear errors."""

from __future__ import annotations

import pytest
import torch

from npdecode.backbone import load_backbone
from npdecode.decoding import search
from npdecode.errors import NpdecodeError
from npdecode.model import VanillaModel
from npdecode.trie import build_trie
from tests.core.helpers import exhaustive, make_np_model, random_sequences

pytest.importorskip("faiss")
from npdecode.normalizer import IvfNormalizer

QUERIES = ["alpha beta", "river castle gold", "storm"]
N_ROWS = 400  # root edges (<= 40 per row) are far fewer than V/4: every step takes the sparse path


def _setup(t5_dir, scale=1.0):
    model = make_np_model(load_backbone(t5_dir), n_rows=N_ROWS, scale=scale)
    seqs = random_sequences(40, vocab=N_ROWS, eos=model.eos_id, seed=4, max_len=4)
    return model, seqs


def _count_sparse_steps(model):
    calls = []
    inner = model.step_scaled_hidden
    model.step_scaled_hidden = lambda prev, state: (calls.append(len(prev)), inner(prev, state))[1]
    return calls


@pytest.mark.parametrize("id_space", ["ce", "token"])
def test_probing_everything_is_exact(t5_dir, id_space):
    """nprobe = nlist and topk = V_ce: the same lists and scores as the exact decoder."""
    model, seqs = _setup(t5_dir)
    if id_space == "token":
        seqs = sorted({tuple(model.ce_token_ids[s].tolist()) for s in seqs})
        seqs = [list(s) for s in seqs]
    trie = build_trie(seqs, id_space=id_space)
    exact = search(model, trie, QUERIES, k=8, beam=8)
    norm = IvfNormalizer(model.ce, nlist=4, nprobe=4, topk=N_ROWS)
    calls = _count_sparse_steps(model)
    approx = search(model, trie, QUERIES, k=8, beam=8, normalizer=norm)
    assert calls, "the sparse path never ran"
    for a, b in zip(approx, exact):
        assert [v for v, _ in a] == [v for v, _ in b]
        assert max(abs(x - y) for (_, x), (_, y) in zip(a, b)) < 1e-3


def test_partial_probe_scores_bound_the_exact_ones(t5_dir):
    """With few lists probed the normalizer is a lower bound, so every returned score is at least
    the exact (float64 teacher-forced) score of the same path, and never above 0."""
    model, seqs = _setup(t5_dir, scale=3.0)
    trie = build_trie(seqs)
    norm = IvfNormalizer(model.ce, nlist=8, nprobe=1, topk=5)
    approx = search(model, trie, QUERIES, k=10, beam=4, normalizer=norm, past_beam="widen")  # decoded scores
    for q, hits in zip(QUERIES, approx):
        exact = dict(exhaustive(model, q, seqs))
        assert hits
        for value, score in hits:
            assert 0 <= value < len(seqs)  # a stored sequence, i.e. a trie path
            assert score <= 1e-6
            assert score >= exact[value] - 1e-3


def test_normalizer_errors(t5_dir):
    model, _ = _setup(t5_dir)
    with pytest.raises(NpdecodeError, match="nlist"):
        IvfNormalizer(model.ce, nlist=N_ROWS + 1)
    norm = IvfNormalizer(model.ce, nlist=4)
    vanilla = VanillaModel(model.backbone)
    with pytest.raises(NpdecodeError, match="Np model"):
        search(vanilla, build_trie([[5, 1]], id_space="token"), ["q"], normalizer=norm)
    assert norm.settings() == {"kind": "ivf", "nlist": 4, "nprobe": 4, "topk": 400}


def test_sparse_logits_match_the_dense_product():
    from npdecode.normalizer import SparseLogits

    g = torch.Generator().manual_seed(0)
    h, ce = torch.randn(3, 8, generator=g), torch.randn(20, 8, generator=g)
    dense = h @ ce.T
    lazy = SparseLogits(h, ce)
    rows, ids = torch.tensor([0, 2, 1]), torch.tensor([5, 19, 0])
    torch.testing.assert_close(lazy[rows, ids], dense[rows, ids])
    rows2, ids2 = torch.tensor([[0], [1]]), torch.tensor([[1, 2, 3], [4, 5, 6]])
    torch.testing.assert_close(lazy[rows2, ids2], dense[rows2, ids2])


def test_parse_normalizer():
    from npdecode.normalizer import parse_normalizer

    assert parse_normalizer("exact") is None
    assert parse_normalizer("ivf") == {}
    assert parse_normalizer("ivf:32:1024:500") == {"nprobe": 32, "topk": 1024, "nlist": 500}
    for bad in ("ivf:0", "ivf:a", "flat", "exact:3", "ivf:1:2:3:4"):
        with pytest.raises(NpdecodeError, match="ivf"):
            parse_normalizer(bad)


def test_thread_setting_is_restored_after_building_and_searching(t5_dir):
    faiss = pytest.importorskip("faiss")
    model = make_np_model(load_backbone(t5_dir), n_rows=N_ROWS)
    before = faiss.omp_get_max_threads()
    norm = IvfNormalizer(model.ce, nlist=4, nprobe=2, topk=8, threads=1 if before != 1 else 2)
    assert faiss.omp_get_max_threads() == before
    norm.lse(torch.randn(3, model.ce.shape[1]))
    assert faiss.omp_get_max_threads() == before


def test_ivf_structure_is_built_once_saved_in_the_index_dir_and_loaded(t5_dir, tmp_path, monkeypatch):
    """The first search with --normalizer ivf trains the IVF lists and saves them in the index
    dir; the next one loads them (no k-means) and decodes the same lists."""
    from npdecode import normalizer
    from npdecode.index.builder import build_index
    from npdecode.search.retrievers.generative import GenerativeRetriever
    from tests.index.helpers import fast_config, toy_corpus_file

    index_dir = build_index(toy_corpus_file(tmp_path, 10, seed=3), t5_dir, tmp_path / "idx", fast_config(k=0))
    queries = {"a": "alpha river", "b": "gold storm"}
    first = GenerativeRetriever(index_dir, kind="np", normalizer="ivf:2:8:2", device="cpu")
    assert not first.normalizer.loaded and len(list(index_dir.glob("ivf-*.faiss"))) == 1
    want = first.search(queries, 5)
    monkeypatch.setattr(normalizer, "_train_ivf", lambda *a: (_ for _ in ()).throw(AssertionError("retrained")))
    second = GenerativeRetriever(index_dir, kind="np", normalizer="ivf:2:8:2", device="cpu")
    assert second.normalizer.loaded and second.search(queries, 5) == want
