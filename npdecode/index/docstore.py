"""The corpus of a build on disk: an SQLite table of its documents, read by row.

``npdecode index`` streams the corpus once into ``corpus.sqlite`` in the build's work dir and
keeps only fixed-size arrays per document in memory (the content digest, the doc-id order):
titles and texts are read back by row when the identifiers are made, when each shard is encoded
and when ``documents.jsonl`` is written. A corpus of KILT's 5.9M pages is thus never a dict of
strings in Python (issue 20). SQLite because it is the standard embedded store (Python's own
``sqlite3``): rows by id through its B-tree, a bounded page cache, sorting by doc id with its
external sorter (byte order of UTF-8 = the code-point order of ``sorted``), no server.

Documents with neither title nor text are not stored (:func:`~npdecode.index.identifiers.is_empty`);
their ids are returned for the manifest. Duplicate ids are found when sorting, with the error
:func:`npdecode.corpus.iter_corpus` gives.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np

from npdecode.errors import NpdecodeError

_BATCH = 10_000  # rows per insert


class DocStore:
    """Non-empty documents of a corpus, rows ``0..n-1`` in file order (see module docstring).

    Implements the documents interface of :mod:`npdecode.index.identifiers`: ``len``,
    ``row(r) -> (doc_id, title, text)``, ``id_order()`` and ``digests()``. Picklable (a
    ddp_spawn encoding process reopens the file)."""

    def __init__(self, path: Path, digests: np.ndarray) -> None:
        self.path, self._digests = Path(path), digests
        self._db: sqlite3.Connection | None = None

    @classmethod
    def build(cls, corpus: str | Path, path: str | Path) -> tuple[DocStore, list[str]]:
        """Stream ``corpus`` into a new store at ``path`` (replaced if there); returns the store
        and the sorted ids of the documents left out for having neither title nor text."""
        from npdecode.corpus import iter_corpus
        from npdecode.index.identifiers import content_digest, is_empty

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        db = _connect(path)
        db.execute("CREATE TABLE docs (row INTEGER PRIMARY KEY, doc_id TEXT NOT NULL, title TEXT, text TEXT)")
        digests = bytearray()
        empty: list[str] = []
        batch: list[tuple] = []
        n = 0
        for doc_id, doc in iter_corpus(corpus, unique_ids=False):
            if is_empty(doc):
                empty.append(doc_id)
                continue
            title, text = doc.get("title") or "", doc.get("text") or ""
            digests += bytes.fromhex(content_digest(title, text))
            batch.append((n, doc_id, title, text))
            n += 1
            if len(batch) >= _BATCH:
                db.executemany("INSERT INTO docs VALUES (?, ?, ?, ?)", batch)
                batch = []
        if batch:
            db.executemany("INSERT INTO docs VALUES (?, ?, ?, ?)", batch)
        db.commit()
        db.close()
        store = cls(path, np.frombuffer(bytes(digests), dtype="S20").copy())
        store._check_unique(corpus, empty)
        return store, sorted(empty)

    def __getstate__(self) -> dict:
        return {"path": self.path, "_digests": self._digests, "_db": None}

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            self._db = _connect(self.path)
        return self._db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def __len__(self) -> int:
        return len(self._digests)

    def row(self, r: int) -> tuple[str, str, str]:
        """(doc_id, title, text) of row ``r``."""
        found = self._conn().execute("SELECT doc_id, title, text FROM docs WHERE row = ?", (int(r),)).fetchone()
        if found is None:
            raise IndexError(r)
        return found

    def doc_id(self, r: int) -> str:
        return self._conn().execute("SELECT doc_id FROM docs WHERE row = ?", (int(r),)).fetchone()[0]

    def digests(self) -> np.ndarray:
        """(n,) ``S20``: the sha1 of each row's normalized title and text (``content_digest``)."""
        return self._digests

    def id_order(self) -> np.ndarray:
        """(n,) int64: the rows sorted by doc id."""
        cursor = self._conn().execute("SELECT row FROM docs ORDER BY doc_id")
        return np.fromiter((r for (r,) in cursor), dtype=np.int64, count=len(self))

    def _check_unique(self, corpus: str | Path, empty: list[str]) -> None:
        """Every doc id once, among the stored and the skipped documents."""
        from npdecode.corpus import corpus_file

        db = self._conn()
        db.execute("CREATE TEMP TABLE skipped (doc_id TEXT NOT NULL)")
        db.executemany("INSERT INTO skipped VALUES (?)", ((e,) for e in empty))
        cursor = db.execute("SELECT doc_id FROM docs UNION ALL SELECT doc_id FROM skipped ORDER BY 1")
        previous = None
        for (doc_id,) in cursor:
            if doc_id == previous:
                raise NpdecodeError(
                    f"{corpus_file(corpus)}: duplicate document id {doc_id!r}; document ids must be unique"
                )
            previous = doc_id
        db.execute("DROP TABLE skipped")


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(str(path), check_same_thread=False)
    db.execute("PRAGMA journal_mode = OFF")  # a work file: rebuilt, never recovered
    db.execute("PRAGMA synchronous = OFF")
    db.execute("PRAGMA cache_size = -16384")  # 16 MiB of page cache, whatever the corpus size
    db.execute("PRAGMA temp_store = FILE")  # ORDER BY spills to disk, not to memory
    return db
