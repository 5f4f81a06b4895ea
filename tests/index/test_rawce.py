"""--raw-ce on disk: raw.safetensors streamed shard by shard, the raw store in parts.

Oracles: the raw vectors are the encoder states the shards hold (read all at once with
``read_shards``); the store in parts answers what one exact search over every raw vector
answers (float64 brute force); an append adds parts and keeps the old ones.
"""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import load_file

from npdecode.index.appender import append_to_index
from npdecode.index.builder import build_index
from npdecode.index.layout import load_index
from npdecode.index.rawce import RawSource, RawStore, part_files, write_parts, write_raw_file
from npdecode.index.store import CEStore
from tests.index.helpers import fast_config, toy_corpus_file, write_jsonl
from tests.tiny_models import toy_corpus


def _brute(vectors, queries, k):
    scores = queries.astype(np.float64) @ vectors.astype(np.float64).T
    order = np.lexsort((np.broadcast_to(np.arange(len(vectors)), scores.shape), -scores), axis=1)[:, :k]
    return order


def test_streamed_raw_file_reads_back_as_the_arrays(tmp_path):
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((23, 5)).astype(np.float32)
    tokens, rows = rng.integers(0, 99, 23), rng.integers(0, 40, 23)
    chunks = [slice(0, 4), slice(4, 4), slice(4, 17), slice(17, 23)]
    source = RawSource(23, 5, lambda key: ({"vectors": vectors, "tokens": tokens}[key][c] for c in chunks), rows)
    write_raw_file(tmp_path / "raw.safetensors", source)
    back = load_file(str(tmp_path / "raw.safetensors"))
    assert np.array_equal(back["vectors"], vectors) and back["vectors"].dtype == np.float32
    assert np.array_equal(back["tokens"], tokens) and np.array_equal(back["rows"], rows)
    short = RawSource(23, 5, lambda key: iter([{"vectors": vectors, "tokens": tokens}[key][:20]]), rows)
    with pytest.raises(RuntimeError, match="expected"):
        write_raw_file(tmp_path / "bad.safetensors", short)
    assert not (tmp_path / "bad.safetensors").exists()  # atomic: nothing half-written


@pytest.mark.parametrize("per_part", [1, 7, 40, 1000])
def test_a_store_in_parts_answers_like_one_exact_search(tmp_path, per_part):
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((60, 8)).astype(np.float32)
    vectors[30] = vectors[3]  # a tie: the lower id first
    names = write_parts(tmp_path / "store", iter([vectors[:13], vectors[13:14], vectors[14:]]), 8, "Flat", per_part)
    assert len(names) == -(-60 // per_part) and [p.name for p in part_files(tmp_path / "store")] == names
    store = RawStore(tmp_path / "store")
    queries = np.concatenate([rng.standard_normal((5, 8)), vectors[3:4]]).astype(np.float32)
    scores, ids = store.search(queries, 10)
    assert store.ntotal == 60
    assert np.array_equal(ids, _brute(vectors, queries, 10))
    one = CEStore(8)
    one.add(vectors)
    np.testing.assert_allclose(scores, one.search(queries, 10)[0], rtol=1e-5, atol=1e-5)
    _, padded = store.search(queries[:1], 70)
    assert (padded[0, 60:] == -1).all() and sorted(padded[0, :60].tolist()) == list(range(60))


def test_a_build_writes_the_raw_ce_of_every_occurrence_in_parts(t5_dir, tmp_path):
    corpus = toy_corpus_file(tmp_path, 24)
    config = fast_config(raw_ce=True, cluster_memory_mb=0.002)  # 2 KB: a part per few vectors
    build_index(corpus, t5_dir, tmp_path / "idx", config)
    index = load_index(tmp_path / "idx")
    raw = load_file(str(tmp_path / "idx" / "segments" / "00000" / "raw.safetensors"))
    n = index.manifest.counts.occurrences
    assert raw["vectors"].shape[0] == n == len(raw["tokens"]) == len(raw["rows"])
    assert np.array_equal(index.token_ids[raw["rows"]], raw["tokens"])  # each occurrence's row is of its token
    flat = [c for g in index.groups for c in g.ce]
    assert raw["rows"].tolist() == flat
    store_dir = tmp_path / "idx" / index.manifest.files.raw_store
    assert len(part_files(store_dir)) > 1
    store = RawStore(store_dir)
    _, ids = store.search(raw["vectors"][:5], 3)
    assert np.array_equal(ids, _brute(raw["vectors"], raw["vectors"][:5], 3))
    # the budget cuts the store into parts, never changes what is stored
    config2 = fast_config(raw_ce=True)
    build_index(corpus, t5_dir, tmp_path / "again", config2)
    again = load_file(str(tmp_path / "again" / "segments" / "00000" / "raw.safetensors"))
    assert np.array_equal(again["vectors"], raw["vectors"])


def test_an_append_adds_parts_and_links_the_old_ones(t5_dir, tmp_path):
    docs = toy_corpus(16, seed=3)
    first = write_jsonl({k: v for k, v in docs.items() if int(k[1:]) < 10}, tmp_path / "a.jsonl")
    second = write_jsonl({f"n{k}": v for k, v in docs.items() if int(k[1:]) >= 10}, tmp_path / "b.jsonl")
    build_index(first, t5_dir, tmp_path / "idx", fast_config(raw_ce=True))
    append_to_index(second, tmp_path / "idx")
    index = load_index(tmp_path / "idx")
    vectors = np.concatenate(
        [load_file(str(tmp_path / "idx" / "segments" / s / "raw.safetensors"))["vectors"] for s in ("00000", "00001")]
    )
    store = RawStore(tmp_path / "idx" / index.manifest.files.raw_store)
    assert store.ntotal == len(vectors) == index.manifest.counts.occurrences
    assert np.array_equal(store.search(vectors[-4:], 2)[1], _brute(vectors, vectors[-4:], 2))
