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

        doc_ids, texts = [], []
        for doc_id, doc in iter_corpus(corpus_path):
            doc_ids.append(doc_id)
            texts.append(f"{doc['title']} {doc['text']}".strip())
        tokens = bm25s.tokenize(texts, stopwords=settings.stopwords, stemmer=_stemmer(settings), show_progress=True)
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
