"""Corpus readers: the data contract ``corpus = {doc_id: {"title": str, "text": str}}``.

Accepted inputs (docs/data-formats.md):

- a BEIR folder (``corpus.jsonl`` inside),
- a ``.jsonl`` file with ``_id``, ``title`` (optional), ``text`` per line,
- a ``.tsv`` file, ``id<TAB>title<TAB>text`` or ``id<TAB>text`` (a header line whose first
  column is ``id``/``_id``/``docid``/``doc_id`` is skipped),
- a folder of ``.txt`` files (doc id = file stem; title empty; text = file content).

Everything streams: :func:`iter_corpus` reads each line once and keeps only the set of ids
seen (to refuse duplicates), so a corpus of millions of documents is never held twice.
Every malformed row is a :class:`NpdecodeError` naming the file and line.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

from npdecode.errors import NpdecodeError

Document = dict[str, str]

_TSV_HEADER_IDS = {"id", "_id", "docid", "doc_id", "corpus-id", "pid"}


def read_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` of a UTF-8 file; bad bytes name the file and line."""
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise NpdecodeError(
                    f"{path}:{lineno}: not valid UTF-8 (byte 0x{raw[err.start]:02x} at column "
                    f"{err.start + 1}); re-encode the file as UTF-8"
                ) from None
            if lineno == 1:
                line = line.removeprefix("\ufeff")
            yield lineno, line.rstrip("\r\n")


def read_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, object)`` for each non-blank line of a JSON-lines file."""
    for lineno, line in read_lines(path):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise NpdecodeError(f"{path}:{lineno}: malformed JSON ({err.msg}); fix or remove the line") from None
        if not isinstance(obj, dict):
            raise NpdecodeError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
        yield lineno, obj


def _string_field(obj: dict, key: str, path: Path, lineno: int) -> str:
    value = obj.get(key)
    if value is None:
        return ""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise NpdecodeError(f"{path}:{lineno}: field {key!r} must be a string, got {type(value).__name__}")
    return value


def _iter_jsonl_corpus(path: Path) -> Iterator[tuple[str, Document]]:
    for lineno, obj in read_jsonl(path):
        if "_id" not in obj:
            raise NpdecodeError(f"{path}:{lineno}: missing '_id' (each line needs _id, title, text)")
        doc_id = _string_field(obj, "_id", path, lineno)
        if not doc_id:
            raise NpdecodeError(f"{path}:{lineno}: empty '_id'")
        doc = {"title": _string_field(obj, "title", path, lineno), "text": _string_field(obj, "text", path, lineno)}
        yield doc_id, doc


def _iter_tsv_corpus(path: Path) -> Iterator[tuple[str, Document]]:
    for lineno, line in read_lines(path):
        if not line.strip():
            continue
        cols = line.split("\t")
        if lineno == 1 and cols[0].strip().lower() in _TSV_HEADER_IDS:
            continue
        if len(cols) == 2:
            doc_id, title, text = cols[0], "", cols[1]
        elif len(cols) == 3:
            doc_id, title, text = cols
        else:
            raise NpdecodeError(
                f"{path}:{lineno}: expected 'id<TAB>title<TAB>text' or 'id<TAB>text', got {len(cols)} columns"
            )
        if not doc_id.strip():
            raise NpdecodeError(f"{path}:{lineno}: empty document id")
        yield doc_id.strip(), {"title": title, "text": text}


def _iter_txt_folder(folder: Path) -> Iterator[tuple[str, Document]]:
    for file in sorted(folder.glob("*.txt")):
        try:
            text = file.read_bytes().decode("utf-8")
        except UnicodeDecodeError as err:
            line = file.read_bytes()[: err.start].count(b"\n") + 1
            raise NpdecodeError(f"{file}:{line}: not valid UTF-8; re-encode the file as UTF-8") from None
        yield file.stem, {"title": "", "text": text.strip()}


def corpus_file(path: str | Path) -> Path:
    """Resolve a corpus argument to the file or folder actually read (BEIR folder -> corpus.jsonl)."""
    path = Path(path)
    if not path.exists():
        raise NpdecodeError(f"{path}: no such corpus file or folder")
    if path.is_dir():
        if (path / "corpus.jsonl").is_file():
            return path / "corpus.jsonl"
        if any(path.glob("*.txt")):
            return path
        raise NpdecodeError(
            f"{path}: folder has neither corpus.jsonl (BEIR layout) nor .txt files; "
            "give a .jsonl/.tsv file or a BEIR folder"
        )
    if path.suffix not in {".jsonl", ".tsv"}:
        raise NpdecodeError(
            f"{path}: unknown corpus format {path.suffix!r}; use .jsonl, .tsv, a BEIR folder or a folder of .txt"
        )
    return path


def iter_corpus(path: str | Path, *, unique_ids: bool = True) -> Iterator[tuple[str, Document]]:
    """Stream ``(doc_id, {"title", "text"})`` from any accepted corpus input.

    Raises NpdecodeError on duplicate ids, malformed rows and an empty corpus. ``unique_ids=False``
    leaves the duplicate check to the caller (it keeps no set of the ids: a corpus of millions
    streamed into an on-disk store, :mod:`npdecode.index.docstore`, checks them there).
    """
    source = corpus_file(path)
    if source.is_dir():
        rows = _iter_txt_folder(source)
    elif source.suffix == ".jsonl":
        rows = _iter_jsonl_corpus(source)
    else:
        rows = _iter_tsv_corpus(source)
    seen: set[str] = set()
    n = 0
    for doc_id, doc in rows:
        if unique_ids:
            if doc_id in seen:
                raise NpdecodeError(f"{source}: duplicate document id {doc_id!r}; document ids must be unique")
            seen.add(doc_id)
        n += 1
        yield doc_id, doc
    if not n:
        raise NpdecodeError(f"{source}: the corpus is empty")


def load_corpus(path: str | Path) -> dict[str, Document]:
    """The whole corpus as a dict (insertion order = file order)."""
    return dict(iter_corpus(path))


def corpus_digest(path: str | Path) -> str:
    """sha256 of the corpus bytes (of every .txt for a folder), for manifests and caches."""
    source = corpus_file(path)
    files = sorted(source.glob("*.txt")) if source.is_dir() else [source]
    return files_digest([(file.name, file) for file in files])


def files_digest(named_files: list[tuple[str, Path]]) -> str:
    """sha256 over (name, bytes) of each file in the given order, streamed: the one file hash of
    the package (corpora, model directories)."""
    digest = hashlib.sha256()
    for name, file in named_files:
        digest.update(name.encode())
        with open(file, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
