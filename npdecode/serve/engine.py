"""A loaded retriever over one state of an index dir, with its documents: what a batch decodes with.

The server holds one :class:`Engine` and replaces it whole after a live append
(:func:`append_and_load`): a batch reads the reference once and finishes on the engine it
started with, so no search sees half an index. Answers are ranked exactly as
``npdecode search`` prints them: ``(-score, doc_id)``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from npdecode.corpus import Document
from npdecode.errors import NpdecodeError
from npdecode.index.layout import Index, load_index
from npdecode.serve.documents import live_documents, write_live_corpus, write_posted
from npdecode.serve.settings import ServeSettings

log = logging.getLogger(__name__)
Hit = tuple[str, float]  # (doc_id, score)
WARMUP_QUERY = "warm up the decoder"


@dataclass
class Engine:
    retriever: Any  # search(queries: {qid: text}, k) -> {qid: {doc_id: score}}
    index: Index
    documents: dict[str, Document]

    @property
    def generation(self) -> int:
        return self.index.manifest.generation

    def search(self, queries: list[str], k: int) -> list[list[Hit]]:
        """Top ``k`` ``(doc_id, score)`` per query, best first (ties by doc id)."""
        run = self.retriever.search({str(i): q for i, q in enumerate(queries)}, k)
        return [sorted(run[str(i)].items(), key=lambda kv: (-kv[1], kv[0])) for i in range(len(queries))]


def load_engine(settings: ServeSettings) -> Engine:
    """The retriever ``settings.retriever`` over ``settings.index_dir`` (warmed up unless told not)."""
    options = settings.search
    if settings.retriever in ("np", "genre"):
        from npdecode.search.retrievers.generative import GenerativeRetriever

        retriever = GenerativeRetriever(settings.index_dir, kind=settings.retriever, options=options)
        index = retriever.index
        documents = live_documents(index)
    else:
        from npdecode.search.registry import build_retriever

        index = load_index(settings.index_dir, verify=options.verify)
        documents = live_documents(index)
        if not documents:
            raise NpdecodeError(f"{settings.index_dir}: no corpus file of this index is left for {settings.retriever}")
        retriever = build_retriever(settings.retriever, write_live_corpus(index, documents), options)
    engine = Engine(retriever, index, documents)
    if settings.warmup:
        engine.search([WARMUP_QUERY], 1)
    log.info(
        "%s retriever over %s loaded: %d documents, generation %d",
        settings.retriever,
        settings.index_dir,
        len(documents),
        engine.generation,
    )
    return engine


def release_memory() -> None:
    """Give the memory of a swapped-out engine back to the OS: collect reference cycles, then ask
    glibc to return freed heap pages (a reload allocates in a worker thread's malloc arena, which
    otherwise keeps the old engine's pages; measured in benchmarks/results/serve.md)."""
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    name = ctypes.util.find_library("c")
    if name is None:
        return
    trim = getattr(ctypes.CDLL(name), "malloc_trim", None)
    if trim is not None:
        trim(0)


def append_and_load(settings: ServeSettings, current: Engine, docs: Mapping[str, Document], replace: bool) -> Engine:
    """Append ``docs`` to the index dir as ``npdecode index --append`` does, then load the new state.

    Runs in a worker thread while ``current`` keeps serving; the index on disk is exactly what
    the CLI would leave (its manifest is written last, atomically)."""
    from npdecode.index.appender import append_to_index

    corpus = write_posted(current.index, docs)
    append_to_index(corpus, settings.index_dir, replace=replace, runtime={"progress": False})
    return load_engine(settings)
