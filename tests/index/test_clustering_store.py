"""Per-token k-means (every occurrence -> nearest centroid) and the CE store (faiss vs torch)."""

from __future__ import annotations

import numpy as np
import pytest

from npdecode.errors import NpdecodeError
from npdecode.index.clustering import cluster_by_token
from npdecode.index.store import CEStore, load_store


def _occurrences(seed=0, n=300, dim=8, vocab=7):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab, n)
    centres = rng.normal(size=(vocab, 3, dim)) * 4
    vectors = centres[tokens, rng.integers(0, 3, n)] + rng.normal(size=(n, dim))
    return vectors.astype(np.float32), tokens


# small groups run numpy k-means; groups of >= faiss_min_points run faiss (or torch without it)
PATHS = {
    "numpy": {"faiss_min_points": 10**9},
    "faiss": {"faiss_min_points": 0, "use_faiss": True},
    "torch": {"faiss_min_points": 0, "use_faiss": False},
}


@pytest.mark.parametrize("path", sorted(PATHS))
def test_every_occurrence_goes_to_its_nearest_row_of_its_token(path):
    vectors, tokens = _occurrences()
    out = cluster_by_token(vectors, tokens, k=5, seed=3, **PATHS[path])
    # brute force, float64: the nearest row among the rows of the occurrence's own token
    for i, (v, t) in enumerate(zip(vectors.astype(np.float64), tokens)):
        candidates = np.flatnonzero(out.row_tokens == t)
        dist = ((out.rows[candidates].astype(np.float64) - v) ** 2).sum(1)
        assert out.assignment[i] == candidates[dist.argmin()]
    counts = np.bincount(out.row_tokens)
    assert counts.max() == 5 and out.rows.shape[1] == vectors.shape[1]
    assert set(out.row_tokens) == set(tokens)


@pytest.mark.parametrize("path", sorted(PATHS))
def test_centroids_are_means_of_their_members_and_runs_are_seeded(path):
    vectors, tokens = _occurrences(seed=1)
    a = cluster_by_token(vectors, tokens, k=3, seed=7, iterations=50, **PATHS[path])
    b = cluster_by_token(vectors, tokens, k=3, seed=7, iterations=50, **PATHS[path])
    np.testing.assert_array_equal(a.rows, b.rows)
    np.testing.assert_array_equal(a.assignment, b.assignment)
    # a converged Lloyd fixed point: each row is the mean of the occurrences assigned to it
    for r in range(len(a.rows)):
        members = vectors[a.assignment == r]
        if len(members):
            np.testing.assert_allclose(a.rows[r], members.mean(0), atol=1e-3)


def test_small_groups_keep_their_vectors_and_k0_keeps_everything():
    vectors, tokens = _occurrences(n=40, vocab=20)
    out = cluster_by_token(vectors, tokens, k=100)
    np.testing.assert_array_equal(out.rows[out.assignment], vectors)
    raw = cluster_by_token(vectors, tokens, k=0)
    np.testing.assert_array_equal(raw.rows, vectors)
    np.testing.assert_array_equal(raw.assignment, np.arange(len(vectors)))
    np.testing.assert_array_equal(raw.row_tokens, tokens)


def test_duplicate_vectors_do_not_make_duplicate_rows():
    vectors = np.repeat(np.eye(3, dtype=np.float32), 10, axis=0)
    out = cluster_by_token(vectors, np.zeros(30, dtype=np.int64), k=5)
    assert len(out.rows) == 3
    np.testing.assert_array_equal(out.rows[out.assignment], vectors)


def test_torch_store_equals_faiss_flat(tmp_path):
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(500, 16)).astype(np.float32)
    queries = rng.normal(size=(20, 16)).astype(np.float32)
    f, t = CEStore(16, backend="faiss"), CEStore(16, backend="torch")
    for store in (f, t):
        store.add(rows[:300])
        store.add(rows[300:])
    fs, fi = f.search(queries, 10)
    ts, ti = t.search(queries, 10)
    np.testing.assert_array_equal(fi, ti)
    np.testing.assert_allclose(fs, ts, rtol=1e-5, atol=1e-5)
    # brute-force oracle in float64
    exact = np.argsort(-(queries.astype(np.float64) @ rows.T.astype(np.float64)), axis=1)[:, :10]
    np.testing.assert_array_equal(fi, exact)
    # round trip through disk, both backends
    for store, name in ((f, "f"), (t, "t")):
        store.save(tmp_path / name)
        again = load_store(tmp_path / name)
        assert again.ntotal == 500
        np.testing.assert_array_equal(again.search(queries, 10)[1], fi)


def test_store_with_fewer_rows_than_k_and_factory_errors():
    rows = np.eye(4, dtype=np.float32)
    for backend in ("faiss", "torch"):
        store = CEStore(4, backend=backend)
        store.add(rows[:2])
        scores, ids = store.search(rows[:1], 4)
        assert ids[0, :2].tolist() == [0, 1] and ids[0, 2:].tolist() == [-1, -1]
        assert np.isneginf(scores[0, 2:]).all()
    with pytest.raises(NpdecodeError, match="needs faiss"):
        CEStore(4, "IVF4,Flat", backend="torch")
    with pytest.raises(NpdecodeError, match="rejected by faiss"):
        CEStore(4, "NoSuchIndex")


def test_factory_string_store_trains_and_searches():
    rng = np.random.default_rng(1)
    rows = rng.normal(size=(400, 8)).astype(np.float32)
    store = CEStore(8, "IVF4,Flat")
    store.add(rows)
    store._index.nprobe = 4  # all lists: exact
    _, ids = store.search(rows[:5], 1)
    assert ids[:, 0].tolist() == list(np.argmax(rows[:5] @ rows.T, axis=1))
