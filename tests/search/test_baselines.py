import itertools
import math
import os
from pathlib import Path

import numpy as np
import pytest

from npdecode.errors import NpdecodeError
from npdecode.search.options import SearchOptions
from npdecode.search.registry import Retriever, build_retriever, get_factory, register_retriever
from npdecode.search.retrievers import bm25 as bm25_module
from npdecode.search.retrievers import dense
from npdecode.search.retrievers.bm25 import BM25Settings, build_bm25
from npdecode.search.retrievers.dense import DenseEncoder, build_dense, chunked_search, exact_search
from tests.eval.conftest import DOCS


def _lucene_bm25(query_terms, docs_terms, k1=1.2, b=0.75):
    """Brute-force Lucene BM25 (Elasticsearch): idf = ln(1 + (N - df + .5)/(df + .5))."""
    n = len(docs_terms)
    avgdl = sum(len(d) for d in docs_terms) / n
    scores = []
    for terms in docs_terms:
        s = 0.0
        for t in set(query_terms):
            df = sum(t in d for d in docs_terms)
            tf = terms.count(t)
            if tf:
                s += math.log(1 + (n - df + 0.5) / (df + 0.5)) * tf / (tf + k1 * (1 - b + b * len(terms) / avgdl))
        scores.append(s)
    return scores


def test_bm25_matches_brute_force_lucene_formula(beir_dir, tmp_path):
    import bm25s
    import Stemmer

    retriever = build_bm25(beir_dir / "corpus.jsonl", SearchOptions(cache_dir=tmp_path))
    assert isinstance(retriever, Retriever)
    stem = Stemmer.Stemmer("english").stemWords
    ids = list(DOCS)
    docs_terms = bm25s.tokenize([f"{t} {x}".strip() for t, x in DOCS.values()], stopwords="en", stemmer=stem,
                                return_ids=False, show_progress=False)  # fmt: skip
    query = "cats and dogs barking"
    q_terms = bm25s.tokenize([query], stopwords="en", stemmer=stem, return_ids=False, show_progress=False)[0]
    expected = {i: s for i, s in zip(ids, _lucene_bm25(q_terms, docs_terms)) if s > 0}
    run = retriever.search({"q": query}, k=10)["q"]
    assert run.keys() == expected.keys()
    for doc_id, score in expected.items():
        assert run[doc_id] == pytest.approx(score, rel=1e-5)


def test_bm25_index_is_saved_and_reloaded(beir_dir, tmp_path, monkeypatch):
    first = build_bm25(beir_dir, SearchOptions(cache_dir=tmp_path)).search({"q": "warm windows"}, 3)
    monkeypatch.setattr(bm25_module.BM25Retriever, "build", staticmethod(lambda *a: pytest.fail("rebuilt")))
    assert build_bm25(beir_dir, SearchOptions(cache_dir=tmp_path)).search({"q": "warm windows"}, 3) == first
    assert BM25Settings().key() != BM25Settings(k1=0.9).key()


def _reference_embeddings(model_dir, texts):
    """float64 mean pooling + normalisation, written directly from the definition."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).double().eval()
    out = []
    for text in texts:
        enc = tok(text, return_tensors="pt", truncation=True, max_length=64)
        with torch.no_grad():
            h = model(**enc).last_hidden_state[0]  # (T, d)
        v = h.mean(0)
        out.append((v / v.norm()).numpy())
    return np.stack(out)


def test_dense_scores_equal_float64_reference(beir_dir, tmp_path, tiny_bert_dir):
    retriever = build_dense(
        beir_dir, SearchOptions(model=str(tiny_bert_dir), device="cpu", cache_dir=tmp_path, batch_size=2, max_length=64)
    )
    texts = [f"{t} {x}".strip() for t, x in DOCS.values()]
    docs = _reference_embeddings(tiny_bert_dir, texts)
    query = _reference_embeddings(tiny_bert_dir, ["cats purr"])[0]
    expected = dict(zip(DOCS, docs @ query))
    run = retriever.search({"q": "cats purr"}, k=5)["q"]
    assert run.keys() == expected.keys()
    for doc_id, score in run.items():
        assert score == pytest.approx(expected[doc_id], abs=1e-5)


def test_dense_cache_reused_and_resumed(beir_dir, tmp_path, tiny_bert_dir, monkeypatch):
    options = SearchOptions(model=str(tiny_bert_dir), device="cpu", cache_dir=tmp_path, max_length=64)
    first = build_dense(beir_dir, options).search({"q": "dogs"}, 5)
    calls = []
    original = DenseEncoder.encode
    monkeypatch.setattr(
        DenseEncoder,
        "encode",
        lambda self, texts, progress=False, unit="text": calls.append(len(texts)) or original(self, texts),
    )
    assert build_dense(beir_dir, options).search({"q": "dogs"}, 5) == first
    assert calls == [1]  # only the query was encoded: the corpus came from the cache
    chunk = next((tmp_path / "dense").rglob("chunk-00000.npy"))
    chunk.unlink()  # an interrupted run: the missing chunk is encoded again
    build_dense(beir_dir, options)
    assert calls[1:] == [len(DOCS)]


def test_faiss_and_torch_exact_search_agree():
    rng = np.random.default_rng(0)
    docs = rng.standard_normal((300, 16)).astype(np.float32)
    queries = rng.standard_normal((7, 16)).astype(np.float32)
    s1, i1 = exact_search(docs, queries, 10)
    s2, i2 = exact_search(docs, queries, 10, backend="torch")
    brute = np.argsort(-(queries.astype(np.float64) @ docs.T.astype(np.float64)), axis=1)[:, :10]
    np.testing.assert_array_equal(i1, brute)
    np.testing.assert_array_equal(i2, brute)
    np.testing.assert_allclose(s1, s2, rtol=1e-5)


@pytest.mark.parametrize("sizes", [(300,), (128, 128, 44), (1, 7, 0, 250, 42), (5, 5, 5)])
@pytest.mark.parametrize("k", [1, 10, 64])
def test_chunked_search_equals_one_search_over_all_rows(sizes, k):
    rng = np.random.default_rng(len(sizes) * 100 + k)
    docs = rng.standard_normal((sum(sizes), 16)).astype(np.float32)
    docs[5::37] = docs[3]  # exact ties across chunks: the lower row comes first
    queries = rng.standard_normal((6, 16)).astype(np.float32)
    queries[0] = docs[3]
    bounds = np.cumsum((0,) + sizes)
    chunks = [docs[a:b] for a, b in itertools.pairwise(bounds)]
    scores, ids = chunked_search(chunks, queries, k)
    exact = queries.astype(np.float64) @ docs.T.astype(np.float64)
    top = -np.sort(-exact, axis=1)[:, : min(k, len(docs))]
    assert ids.shape == top.shape and all(len(set(row)) == len(row) for row in ids)
    np.testing.assert_allclose(scores, top, rtol=1e-5, atol=1e-5)  # the k best scores, best first
    np.testing.assert_allclose(np.take_along_axis(exact, ids, 1), top, rtol=1e-5, atol=1e-5)  # of those rows


def test_dense_run_does_not_depend_on_the_chunking(beir_dir, tmp_path, tiny_bert_dir, monkeypatch):
    options = {"model": str(tiny_bert_dir), "device": "cpu", "max_length": 64}
    whole = build_dense(beir_dir, SearchOptions(cache_dir=tmp_path / "a", **options))
    monkeypatch.setattr(dense, "CHUNK", 2)  # several chunks, the last one short
    chunked = build_dense(beir_dir, SearchOptions(cache_dir=tmp_path / "b", **options))
    assert len(chunked.chunks) == -(-len(DOCS) // 2) and len(whole.chunks) == 1
    queries = {"q1": "cats purr", "q2": "dogs bark loudly"}
    got, want = chunked.search(queries, len(DOCS)), whole.search(queries, len(DOCS))
    for q in queries:  # the tiny random encoder ties some documents: compare scores per document
        assert got[q].keys() == want[q].keys() and got[q] == pytest.approx(want[q], abs=1e-6)
        assert list(got[q].values()) == sorted(got[q].values(), reverse=True)


def test_missing_model_is_a_clear_error(beir_dir, tmp_path):
    with pytest.raises(NpdecodeError, match="cannot load encoder"):
        build_dense(beir_dir, SearchOptions(model=str(tmp_path / "no-model"), device="cpu", cache_dir=tmp_path))


def test_registry():
    with pytest.raises(NpdecodeError, match="unknown retriever 'nope'; choose from: bm25, dense"):
        get_factory("nope")
    with pytest.raises(ValueError, match="already registered"):
        register_retriever("bm25", lambda corpus, options: None)

    class Fixed:
        name = "fixed"

        def search(self, queries, k):
            return {q: {"d1": 1.0} for q in queries}

    register_retriever("fixed-test", lambda corpus, options: Fixed())
    assert build_retriever("fixed-test", None, {}).search({"q": "x"}, 1) == {"q": {"d1": 1.0}}


def test_registry_replace_is_explicit_and_never_for_builtins():
    first, second = (lambda corpus, options: "one"), (lambda corpus, options: "two")
    register_retriever("replace-test", first)
    with pytest.raises(ValueError, match="already registered"):
        register_retriever("replace-test", second)
    register_retriever("replace-test", second, replace=True)
    assert get_factory("replace-test") is second
    with pytest.raises(ValueError, match="already registered"):
        register_retriever("bm25", second, replace=True)


def test_bm25_streamed_tokenization_builds_the_index_of_whole_corpus_tokenization(tmp_path):
    """Chunks of 7 documents, each document's ids an int32 array: the same scores and ranking as
    ``bm25s.tokenize`` of every text at once (600 SciFact documents, 30 of its queries)."""
    import json

    import bm25s

    from npdecode.corpus import iter_corpus

    scifact = Path(os.environ.get("NPDECODE_DATA") or Path(__file__).resolve().parents[2].parent / "shared" / "data")
    scifact /= "scifact"
    rows = [json.loads(line) for line in (scifact / "corpus.jsonl").read_text().splitlines()[:600]]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    settings = BM25Settings()
    doc_ids, tokens = bm25_module.tokenize_corpus(corpus, settings, chunk=7)
    assert doc_ids == [d for d, _ in iter_corpus(corpus)]
    texts = [f"{doc['title']} {doc['text']}".strip() for _, doc in iter_corpus(corpus)]
    whole = bm25s.tokenize(texts, stopwords="en", stemmer=bm25_module._stemmer(settings), show_progress=False)
    words_whole = {i: w for w, i in whole.vocab.items()}
    words_streamed = {i: w for w, i in tokens.vocab.items()}
    assert [[words_streamed[i] for i in doc.tolist()] for doc in tokens.ids] == [
        [words_whole[i] for i in doc] for doc in whole.ids
    ]
    queries = [json.loads(line)["text"] for line in (scifact / "queries.jsonl").read_text().splitlines()[:30]]
    q = bm25s.tokenize(queries, stopwords="en", stemmer=bm25_module._stemmer(settings), return_ids=False,
                       show_progress=False)  # fmt: skip
    results = []
    for corpus_tokens in (tokens, whole):
        index = bm25s.BM25(k1=settings.k1, b=settings.b, method=settings.method)
        index.index(corpus_tokens, show_progress=False)
        results.append(index.retrieve(q, k=20, show_progress=False, n_threads=1))
    (docs_a, scores_a), (docs_b, scores_b) = results
    assert np.array_equal(docs_a, docs_b)
    assert np.array_equal(scores_a, scores_b)
