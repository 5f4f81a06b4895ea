"""The documents an index dir holds now, read from the corpora its manifest records.

An index keeps identifiers and CE rows, not the documents' text: the manifest's ``corpus``
lists the file of the build and of every append. Read in that order, a later file's version
of a doc id wins (``--replace``), and only ids the index still holds are kept. Documents
posted to a running server are first written to ``INDEX_DIR/posted/<segment>.jsonl``, the
file their append records, so the index dir stays self-describing after a restart.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path

from npdecode.atomic import atomic_file
from npdecode.corpus import Document, iter_corpus
from npdecode.index.layout import Index

log = logging.getLogger(__name__)
POSTED = "posted"


def live_documents(index: Index) -> dict[str, Document]:
    """``{doc_id: {"title", "text"}}`` of the documents ``index`` holds (a missing corpus file
    is logged and its documents served without text)."""
    live = index.live_doc_set()
    docs: dict[str, Document] = {}
    for entry in index.manifest.corpus:
        path = Path(entry.path)
        if not path.exists():
            log.warning("%s: corpus file %s is gone; its documents are served without title and text", index.path, path)
            continue
        for doc_id, doc in iter_corpus(path):
            if doc_id in live:
                docs[doc_id] = doc
    return docs


def write_posted(index: Index, docs: Mapping[str, Document]) -> Path:
    """Write posted documents as the corpus of the index's next segment (BEIR ``.jsonl``)."""
    path = index.path / POSTED / f"{len(index.manifest.segments):05d}.jsonl"
    path.parent.mkdir(exist_ok=True)
    with atomic_file(path) as fh:
        for doc_id, doc in docs.items():
            fh.write(json.dumps({"_id": doc_id, "title": doc.get("title", ""), "text": doc.get("text", "")}) + "\n")
    return path


def write_live_corpus(index: Index, docs: Mapping[str, Document]) -> Path:
    """The index's live documents as one corpus file (what BM25 and dense retrievers index)."""
    if len(index.manifest.corpus) == 1 and not index.removed and Path(index.manifest.corpus[0].path).exists():
        return Path(index.manifest.corpus[0].path)
    path = index.path / POSTED / f"live-{index.manifest.generation:05d}.jsonl"
    path.parent.mkdir(exist_ok=True)
    with atomic_file(path) as fh:
        for doc_id in sorted(docs):
            fh.write(json.dumps({"_id": doc_id, **docs[doc_id]}) + "\n")
    return path
