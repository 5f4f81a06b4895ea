"""Clustering over the shards on disk (bounded memory) = the in-memory clustering of their
concatenation; sampled tokens; budget, process count and resume never change the result."""

from __future__ import annotations

import itertools
import threading

import numpy as np
import pytest
import torch

from npdecode.index import streaming
from npdecode.index.clustering import cluster_by_token, sample_ordinals
from npdecode.index.extraction import read_shards, shard_count, write_shard
from npdecode.index.streaming import cluster_shards, token_ranges

SHARD = 7


def _corpus(seed=0, docs=60, dim=6, vocab=12):
    """Identifier tokens per document (token 0 in every document, a Zipf-ish rest) and their
    raw CE: a few modes per token plus noise; token 5 has only two distinct vectors."""
    rng = np.random.default_rng(seed)
    ident_tokens = []
    for _ in range(docs):
        rest = np.minimum(rng.zipf(1.6, size=rng.integers(1, 6)), vocab - 1)
        ident_tokens.append([0, *rest.tolist()])
    tokens = np.array([t for toks in ident_tokens for t in toks], dtype=np.int64)
    modes = rng.normal(size=(vocab, 4, dim)) * 3
    vectors = modes[tokens, rng.integers(0, 4, len(tokens))] + rng.normal(size=(len(tokens), dim))
    fives = np.flatnonzero(tokens == 5)
    vectors[fives] = modes[5, np.arange(len(fives)) % 2]
    return ident_tokens, tokens, vectors.astype(np.float32)


def _write_shards(path, ident_tokens, vectors, shard_size=SHARD):
    path.mkdir(parents=True, exist_ok=True)
    start = 0
    for s in range(shard_count(len(ident_tokens), shard_size)):
        docs = range(s * shard_size, min((s + 1) * shard_size, len(ident_tokens)))
        counts = [len(ident_tokens[g]) for g in docs]
        tokens = [t for g in docs for t in ident_tokens[g]]
        n = sum(counts)
        part = {
            "groups": torch.tensor(list(docs)),
            "counts": torch.tensor(counts),
            "tokens": torch.tensor(tokens),
            "vectors": torch.from_numpy(vectors[start : start + n]),
        }
        # two batches in another order than the documents, as length-bucketed encoding gives
        half = len(docs) // 2
        first = {k: v for k, v in part.items()}
        cut = sum(counts[:half])
        a = {"groups": part["groups"][:half], "counts": part["counts"][:half]}
        a |= {"tokens": part["tokens"][:cut], "vectors": part["vectors"][:cut]}
        b = {"groups": part["groups"][half:], "counts": part["counts"][half:]}
        b |= {"tokens": part["tokens"][cut:], "vectors": part["vectors"][cut:]}
        write_shard(path / f"shard-{s:05d}.safetensors", [b, a] if half else [first])
        start += n
    return shard_count(len(ident_tokens), shard_size)


@pytest.fixture
def shards(tmp_path):
    ident_tokens, tokens, vectors = _corpus()
    n = _write_shards(tmp_path / "shards", ident_tokens, vectors)
    return tmp_path / "shards", n, ident_tokens, tokens, vectors


def _same(a, b):
    np.testing.assert_array_equal(a.rows, b.rows)
    np.testing.assert_array_equal(a.row_tokens, b.row_tokens)
    np.testing.assert_array_equal(a.assignment, b.assignment)


def test_shards_read_back_in_corpus_order(shards):
    shard_dir, n, _, tokens, vectors = shards
    occ = read_shards(shard_dir, n)
    np.testing.assert_array_equal(occ["tokens"], tokens)
    np.testing.assert_array_equal(occ["vectors"], vectors)


@pytest.mark.parametrize("memory_mb", [2048, 1e-4])  # one token range; a range per token
def test_bit_identical_to_the_in_memory_clustering_when_every_token_fits_the_sample(shards, tmp_path, memory_mb):
    shard_dir, n, ident_tokens, tokens, vectors = shards
    expected = cluster_by_token(vectors, tokens, 3, iterations=20, seed=4)
    for sample in (None, int(np.bincount(tokens).max())):
        got = cluster_shards(
            shard_dir, n, ident_tokens, SHARD, tmp_path / f"w{sample}", k=3, seed=4, sample=sample, memory_mb=memory_mb
        )
        _same(got, expected)


def test_a_token_above_the_sample_gets_k_rows_and_every_occurrence_its_nearest(shards, tmp_path):
    shard_dir, n, ident_tokens, tokens, vectors = shards
    sample = 10
    assert np.bincount(tokens)[0] == 60 > sample  # token 0: one occurrence per document
    got = cluster_shards(shard_dir, n, ident_tokens, SHARD, tmp_path / "w", k=3, seed=1, sample=sample, memory_mb=1e-4)
    _same(got, cluster_by_token(vectors, tokens, 3, seed=1, sample=sample))
    assert (got.row_tokens == 0).sum() == 3
    # the rows of token 0 are k-means of its sampled occurrences only
    zeros = np.flatnonzero(tokens == 0)
    fitted = cluster_by_token(
        vectors[zeros][sample_ordinals(len(zeros), sample, 1, 0)], tokens[zeros][:sample], 3, seed=1
    )
    np.testing.assert_array_equal(got.rows[got.row_tokens == 0], fitted.rows)
    # brute force, float64: each occurrence's nearest row among its own token's rows
    for i, (v, t) in enumerate(zip(vectors.astype(np.float64), tokens)):
        candidates = np.flatnonzero(got.row_tokens == t)
        dist = ((got.rows[candidates].astype(np.float64) - v) ** 2).sum(1)
        assert got.assignment[i] == candidates[dist.argmin()]
    # the duplicate-vector token keeps its two distinct vectors as rows
    assert (got.row_tokens == 5).sum() == 2


def test_sample_is_a_fixed_function_of_seed_token_and_count():
    a = sample_ordinals(1000, 50, seed=3, token=17)
    assert len(a) == 50 and len(set(a.tolist())) == 50 and np.all(np.diff(a) > 0) and a.max() < 1000
    np.testing.assert_array_equal(a, sample_ordinals(1000, 50, seed=3, token=17))
    assert not np.array_equal(a, sample_ordinals(1000, 50, seed=3, token=18))
    assert not np.array_equal(a, sample_ordinals(1000, 50, seed=4, token=17))
    np.testing.assert_array_equal(sample_ordinals(40, 50, seed=3, token=17), np.arange(40))


def test_ranges_cover_the_present_tokens_within_the_budget():
    counts = np.array([5, 0, 300, 2, 0, 0, 40, 1])
    dim = 256  # 1 KB per vector
    ranges = token_ranges(counts, 100, dim, memory_mb=150 / 1024)  # 150 vectors per range
    assert ranges[0][0] == 0 and ranges[-1][1] == 8
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
    for lo, hi in ranges:
        size = np.minimum(counts[lo:hi], 100).sum()
        assert size <= 150 or np.count_nonzero(counts[lo:hi]) == 1


def test_two_processes_give_what_one_gives(shards, tmp_path):
    shard_dir, n, ident_tokens, _, _ = shards
    one = cluster_shards(shard_dir, n, ident_tokens, SHARD, tmp_path / "one", k=3, seed=2, sample=8, memory_mb=1e-4)
    barrier = threading.Barrier(2)
    out = {}

    def rank(r):
        out[r] = cluster_shards(
            shard_dir,
            n,
            ident_tokens,
            SHARD,
            tmp_path / "two",
            k=3,
            seed=2,
            sample=8,
            memory_mb=1e-4,
            rank=r,
            world_size=2,
            barrier=lambda name: barrier.wait(timeout=60),
        )

    threads = [threading.Thread(target=rank, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out[1] is None
    _same(out[0], one)
    ranges = sorted((tmp_path / "two" / "clusters").glob("rows-*.safetensors"))
    assert len(ranges) > 2  # the work was split


def test_an_interrupted_clustering_resumes_without_redoing_finished_ranges(shards, tmp_path, monkeypatch):
    shard_dir, n, ident_tokens, tokens, vectors = shards
    expected = cluster_by_token(vectors, tokens, 3, seed=5, sample=9)
    real = streaming.cluster_range
    calls = []

    def crash_after_two(*args, **kwargs):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(args[2:4])
        return real(*args, **kwargs)

    monkeypatch.setattr(streaming, "cluster_range", crash_after_two)
    kwargs = {"k": 3, "seed": 5, "sample": 9, "memory_mb": 1e-4}
    with pytest.raises(KeyboardInterrupt):
        cluster_shards(shard_dir, n, ident_tokens, SHARD, tmp_path / "w", **kwargs)
    done = list(calls)
    calls.clear()
    monkeypatch.setattr(streaming, "cluster_range", lambda *a, **kw: (calls.append(a[2:4]), real(*a, **kw))[1])
    _same(cluster_shards(shard_dir, n, ident_tokens, SHARD, tmp_path / "w", **kwargs), expected)
    assert not set(done) & set(calls) and calls  # the two finished ranges were not redone
    # another budget cuts other ranges: the old range files are dropped, the result is the same
    calls.clear()
    _same(cluster_shards(shard_dir, n, ident_tokens, SHARD, tmp_path / "w", **{**kwargs, "memory_mb": 1}), expected)
    assert len(list((tmp_path / "w" / "clusters").glob("rows-*"))) == len(calls) == 1


def test_shards_that_do_not_match_the_identifiers_are_refused(shards, tmp_path):
    shard_dir, n, ident_tokens, _, _ = shards
    wrong = [list(t) for t in ident_tokens]
    wrong[3][0] = 11
    with pytest.raises(RuntimeError, match="shard-00000.*does not match the identifiers"):
        cluster_shards(shard_dir, n, wrong, SHARD, tmp_path / "w", k=3)


def test_k_zero_keeps_every_occurrence(shards, tmp_path):
    shard_dir, n, ident_tokens, tokens, vectors = shards
    got = cluster_shards(shard_dir, n, ident_tokens, SHARD, tmp_path / "w", k=0)
    _same(got, cluster_by_token(vectors, tokens, 0))


def test_npdecode_index_streams_and_equals_the_in_memory_segment(t5_dir, tmp_path):
    """build_index (shards on disk, tokens above the sample, several ranges) = the in-memory
    path of the same config (CERebuilder: encode, then cluster_by_token), row for row."""
    from npdecode.backbone import load_backbone
    from npdecode.index.builder import CERebuilder, build_index
    from npdecode.index.layout import load_index
    from tests.index.helpers import fast_config, write_jsonl
    from tests.tiny_models import toy_corpus

    corpus = write_jsonl(toy_corpus(16, seed=4), tmp_path / "c.jsonl")
    config = fast_config(k=2, kmeans_sample=3, cluster_memory_mb=1e-3)
    index = load_index(build_index(corpus, t5_dir, tmp_path / "idx", config))
    backbone = load_backbone(t5_dir)
    rows, row_tokens, records, _ = CERebuilder(corpus, config, backbone).rebuild(backbone)
    np.testing.assert_array_equal(index.vectors, rows)
    np.testing.assert_array_equal(index.token_ids, row_tokens)
    assert [(g.identifier, g.ce) for g in index.groups] == [(r.identifier, r.ce) for r in records]
    assert np.bincount(row_tokens).max() == 2 and max(np.bincount([t for r in records for t in r.tokens])) > 3
    assert not (tmp_path / ".idx.partial").exists()
