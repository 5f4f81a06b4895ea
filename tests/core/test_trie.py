"""Prefix trie: oracle tests against brute-force sets of prefixes, round trips, memory bound."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npdecode.errors import NpdecodeError
from npdecode.trie import Trie, build_trie, flatten, group_rows_by_token

seqs_strategy = st.lists(st.lists(st.integers(0, 12), min_size=0, max_size=6), min_size=1, max_size=30)


def _next_ids(seqs, prefix):
    """Brute force: ids that follow ``prefix`` in some stored sequence."""
    return {s[len(prefix)] for s in seqs if len(s) > len(prefix) and s[: len(prefix)] == prefix}


@settings(max_examples=60, deadline=None)
@given(seqs_strategy)
def test_trie_matches_brute_force(seqs):
    trie = build_trie(seqs, values=np.arange(len(seqs)) * 7)
    for i, s in enumerate(seqs):
        node = trie.walk(s)
        assert node >= 0
        stored = set(trie.values(node).tolist())
        assert i * 7 in stored
        assert stored == {j * 7 for j, t in enumerate(seqs) if t == s}
        for cut in range(len(s) + 1):
            prefix = s[:cut]
            ids, _ = trie.children(trie.walk(prefix))
            assert set(ids.tolist()) == _next_ids(seqs, prefix)
            assert list(ids) == sorted(ids)
    mask = trie.allowed_mask(np.array([trie.walk(s[:1]) for s in seqs]), 13)
    for row, s in zip(mask, seqs):
        assert set(np.flatnonzero(row).tolist()) == _next_ids(seqs, s[:1])
    # the stored sequences come back out, with their values (as a multiset)
    tokens, offsets, values = trie.sequences()
    back = sorted((tuple(tokens[offsets[i] : offsets[i + 1]].tolist()), int(v)) for i, v in enumerate(values))
    assert back == sorted((tuple(s), i * 7) for i, s in enumerate(seqs))


@settings(max_examples=30, deadline=None)
@given(seqs_strategy, st.lists(st.integers(0, 12), min_size=1, max_size=6))
def test_step_rejects_paths_outside(seqs, probe):
    trie = build_trie(seqs)
    inside = any(s[: len(probe)] == probe for s in seqs)
    assert (trie.walk(probe) >= 0) == inside
    nodes = np.array([0, -1, 0])
    out = trie.step(nodes, np.array([probe[0], probe[0], 999]))
    assert out[1] == -1 and out[2] == -1
    assert (out[0] >= 0) == any(s[:1] == probe[:1] for s in seqs)


@settings(max_examples=30, deadline=None)
@given(seqs_strategy, seqs_strategy)
def test_extend_equals_build_on_union(old, new):
    grown = build_trie(old).extend(new, np.arange(len(old), len(old) + len(new)))
    union = build_trie(old + new)
    assert np.array_equal(grown.indptr, union.indptr)
    assert np.array_equal(grown.edge_ids, union.edge_ids)
    assert np.array_equal(grown.term_nodes, union.term_nodes)
    for n in union.term_nodes:
        assert sorted(grown.values(int(n))) == sorted(union.values(int(n)))


def test_flat_input_and_save_load(tmp_path):
    seqs = [[3, 4, 1], [3, 5, 1], [6, 1], [3, 4, 1]]
    a = build_trie(seqs, [0, 1, 2, 3], id_space="token")
    b = build_trie(flatten(seqs), [0, 1, 2, 3], id_space="token")
    a.save(tmp_path / "trie.npz")
    c = Trie.load(tmp_path / "trie.npz")
    for t in (b, c):
        assert t.id_space == "token"
        for name in ("indptr", "edge_ids", "term_nodes", "term_ptr", "term_values"):
            assert np.array_equal(getattr(a, name), getattr(t, name))
            assert getattr(a, name).dtype == getattr(t, name).dtype
    assert sorted(c.values(c.walk([3, 4, 1]))) == [0, 3]  # one identifier, two documents
    assert c.n_nodes == 8  # root, 3, 6, 3-4, 3-5, 6-1, 3-4-1, 3-5-1
    assert c.n_sequences == 4


def test_node_count_and_memory_bound():
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, 5000, rng.integers(3, 12)).tolist() + [1] for _ in range(3000)]
    trie = build_trie(seqs)
    n_tokens = sum(map(len, seqs))
    prefixes = {tuple(s[:i]) for s in seqs for i in range(len(s) + 1)}
    assert trie.n_nodes == len(prefixes)
    assert trie.indptr.dtype == np.int32 and trie.edge_ids.dtype == np.int32
    assert trie.nbytes() <= 16 * n_tokens


def test_errors(tmp_path):
    with pytest.raises(NpdecodeError, match="values"):
        build_trie([[1, 2]], [1, 2])
    with pytest.raises(NpdecodeError, match="not found"):
        Trie.load(tmp_path / "missing.npz")
    with pytest.raises(NpdecodeError, match="id_space"):
        build_trie([[1]], id_space="words")


def test_group_rows_by_token():
    tid = np.array([7, 3, 7, 9, 3, 7])
    tokens, ptr, rows = group_rows_by_token(tid)
    assert tokens.tolist() == [3, 7, 9]
    assert [rows[ptr[g] : ptr[g + 1]].tolist() for g in range(3)] == [[1, 4], [0, 2, 5], [3]]


def test_torch_expand_matches_children():
    import torch

    seqs = [[3, 4, 1], [3, 5, 1], [6, 1], [2, 1]]
    trie = build_trie(seqs)
    tt = trie.to_torch("cpu")
    nodes = torch.tensor([0, trie.walk([3]), trie.walk([6, 1]), trie.walk([3])])
    row, ids, child = tt.expand(nodes)
    for r, n in enumerate(nodes.tolist()):
        want_ids, want_child = trie.children(n)
        assert ids[row == r].tolist() == want_ids.tolist()
        assert child[row == r].tolist() == want_child.tolist()


FIELDS = ("indptr", "edge_ids", "term_nodes", "term_ptr", "term_values")


@settings(max_examples=25, deadline=None)
@given(seqs=st.lists(st.lists(st.integers(0, 40), min_size=0, max_size=6), min_size=1, max_size=30))
def test_memory_mapped_load_equals_reading_the_file(tmp_path_factory, seqs):
    path = tmp_path_factory.mktemp("trie") / "t.npz"
    trie = build_trie(seqs, id_space="token")
    trie.save(path)
    mapped, read = Trie.load(path), Trie.load(path, mmap=False)
    for name in FIELDS:
        a, b = getattr(mapped, name), getattr(read, name)
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
        assert isinstance(a, np.memmap) or a.size == 0  # mapped, not read
    assert mapped.id_space == read.id_space == "token"
    for seq in seqs:
        node = mapped.walk(seq)
        assert node >= 0 and np.array_equal(mapped.values(node), read.values(node))


def test_compressed_trie_file_is_read_and_torch_trie_is_made_once(tmp_path):
    trie = build_trie([[1, 2, 3], [1, 4], [5]])
    np.savez_compressed(tmp_path / "z.npz", **{n: getattr(trie, n) for n in FIELDS}, id_space=np.array("ce"))
    loaded = Trie.load(tmp_path / "z.npz")
    assert not isinstance(loaded.indptr, np.memmap) and np.array_equal(loaded.edge_ids, trie.edge_ids)
    assert loaded.to_torch() is loaded.to_torch() and loaded.to_torch("cpu") is not None
