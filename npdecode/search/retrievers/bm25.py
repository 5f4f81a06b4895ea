"""BM25 baseline (bm25s), with BEIR's usual settings.

BEIR's published BM25 is Elasticsearch: Lucene BM25 with k1 = 1.2, b = 0.75 over
``title + text``, English analyzer (stop words, stemming). We use the same scoring
(bm25s ``method="lucene"``), English stop words and the Snowball English stemmer
(PyStemmer). The index is saved under the cache directory, keyed by the corpus digest and
the settings, and reloaded on the next call.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from npdecode.atomic import atomic_dir
from npdecode.cache import cache_root
from npdecode.corpus import corpus_digest, iter_corpus
from npdecode.search.options import SearchOptions
from npdecode.search.registry import register_retriever


@dataclass(frozen=True)
class BM25Settings:
    k1: float = 1.2  # Elasticsearch / BEIR default
    b: float = 0.75
    method: str = "lucene"  # Lucene's idf and tf normalisation, as Elasticsearch
    stemmer: str = "english"  # Snowball; "" disables stemming
    stopwords: str = "en"

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


class BM25Retriever:
    """Sparse lexical retriever over an index built or loaded from ``index_dir``."""

    name = "bm25"

    def __init__(self, index_dir: Path, settings: BM25Settings):
        import bm25s

        self.settings = settings
        self.index = bm25s.BM25.load(str(index_dir), load_corpus=False, mmap=False, show_progress=False)
        self.doc_ids: list[str] = json.loads((index_dir / "doc_ids.json").read_text())

    @staticmethod
    def build(corpus_path: Path, index_dir: Path, settings: BM25Settings) -> None:
        """Tokenize and index the corpus; the index dir appears only when complete."""
        import bm25s

        doc_ids, tokens = tokenize_corpus(corpus_path, settings)
        index = bm25s.BM25(k1=settings.k1, b=settings.b, method=settings.method)
        index.index(tokens, show_progress=True)
        with atomic_dir(index_dir, overwrite=True) as tmp:
            index.save(str(tmp), show_progress=False)
            (tmp / "doc_ids.json").write_text(json.dumps(doc_ids))
            (tmp / "settings.json").write_text(json.dumps(asdict(settings)))

    def search(self, queries: Mapping[str, str], k: int) -> dict[str, dict[str, float]]:
        import bm25s

        qids = list(queries)
        tokens = bm25s.tokenize(
            [queries[q] for q in qids],
            stopwords=self.settings.stopwords,
            stemmer=_stemmer(self.settings),
            return_ids=False,
            show_progress=False,
        )
        k = min(k, len(self.doc_ids))
        docs, scores = self.index.retrieve(tokens, k=k, show_progress=len(qids) > 100, n_threads=1)
        run: dict[str, dict[str, float]] = {}
        for row, qid in enumerate(qids):
            # bm25s pads with score-0 documents when fewer than k match; a run lists matches only.
            run[qid] = {self.doc_ids[int(d)]: float(s) for d, s in zip(docs[row], scores[row]) if s > 0}
        return run


def tokenize_corpus(corpus_path: Path, settings: BM25Settings, chunk: int = 10_000):
    """(doc ids, bm25s ``Tokenized``) of the corpus, streamed: ``bm25s.tokenize`` of ``chunk``
    documents at a time (a document's tokens do not depend on the others), each document's
    token ids kept as one int32 array and the vocabulary grown as tokens appear. The texts are
    never all in memory, and the ids take 4 bytes each instead of a Python int in a list; the
    index is the one ``bm25s.tokenize`` of the whole corpus gives (test_baselines.py)."""
    import bm25s
    import numpy as np
    from bm25s.tokenization import Tokenized

    doc_ids: list[str] = []
    ids: list[np.ndarray] = []
    vocab: dict[str, int] = {}
    batch: list[str] = []

    def flush() -> None:
        docs = bm25s.tokenize(
            batch, stopwords=settings.stopwords, stemmer=_stemmer(settings), return_ids=False, show_progress=False
        )
        for words in docs:
            ids.append(np.fromiter((vocab.setdefault(w, len(vocab)) for w in words), np.int32, len(words)))
        batch.clear()

    for doc_id, doc in iter_corpus(corpus_path):
        doc_ids.append(doc_id)
        batch.append(f"{doc['title']} {doc['text']}".strip())
        if len(batch) >= chunk:
            flush()
    if batch:
        flush()
    return doc_ids, Tokenized(ids=ids, vocab=vocab)


def _stemmer(settings: BM25Settings):
    if not settings.stemmer:
        return None
    import Stemmer

    return Stemmer.Stemmer(settings.stemmer).stemWords


def build_bm25(corpus_path: Path, options: SearchOptions) -> BM25Retriever:
    """Factory: reuse the cached index of this corpus (``options.cache_dir``) or build it."""
    settings = BM25Settings()
    index_dir = cache_root(options.cache_dir) / "bm25" / f"{corpus_digest(corpus_path)[:16]}-{settings.key()}"
    if not (index_dir / "doc_ids.json").is_file():
        BM25Retriever.build(corpus_path, index_dir, settings)
    return BM25Retriever(index_dir, settings)


register_retriever("bm25", build_bm25, builtin=True)
