"""Queries and relevance judgments (qrels).

- queries: ``.jsonl`` (``_id``, ``text``) or ``.tsv`` (``qid<TAB>text``) -> ``{qid: text}``
- qrels: BEIR tsv with header (``query-id corpus-id score``) or TREC qrels
  (``qid iteration docid relevance``) -> ``{qid: {doc_id: int}}``

Relevance is kept graded. Negative grades mean non-relevant: they are stored as 0 (judged,
not relevant), which is how trec_eval treats them for every measure, and counted in
:class:`Qrels` so the caller can report them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from npdecode.corpus import read_jsonl, read_lines
from npdecode.errors import NpdecodeError


def load_queries(path: str | Path) -> dict[str, str]:
    """Read queries from ``.jsonl`` or ``.tsv``; duplicate ids and empty texts are errors."""
    path = Path(path)
    if not path.is_file():
        raise NpdecodeError(f"{path}: no such queries file")
    queries: dict[str, str] = {}
    if path.suffix == ".jsonl":
        rows = ((lineno, obj.get("_id", obj.get("id")), obj.get("text")) for lineno, obj in read_jsonl(path))
    elif path.suffix == ".tsv":
        rows = ((lineno, *_tsv_query(path, lineno, line)) for lineno, line in read_lines(path) if line.strip())
    else:
        raise NpdecodeError(
            f"{path}: unknown queries format {path.suffix!r}; use .jsonl (_id, text) or .tsv (qid<TAB>text)"
        )
    for lineno, qid, text in rows:
        if qid is None or str(qid).strip() == "":
            raise NpdecodeError(f"{path}:{lineno}: missing query id ('_id')")
        if not isinstance(text, str) or not text.strip():
            raise NpdecodeError(f"{path}:{lineno}: query {qid!r} has no text")
        qid = str(qid)
        if qid in queries:
            raise NpdecodeError(f"{path}:{lineno}: duplicate query id {qid!r}")
        queries[qid] = text
    if not queries:
        raise NpdecodeError(f"{path}: no queries")
    return queries


def _tsv_query(path: Path, lineno: int, line: str) -> tuple[str, str]:
    cols = line.split("\t")
    if len(cols) != 2:
        raise NpdecodeError(f"{path}:{lineno}: expected 'qid<TAB>text', got {len(cols)} columns")
    return cols[0].strip(), cols[1]


@dataclass
class Qrels:
    """Judgments plus what reading them noticed."""

    judgments: dict[str, dict[str, int]]
    negatives: int = 0  # negative grades read (stored as 0 = non-relevant)
    source: str = ""
    notes: list[str] = field(default_factory=list)


def load_qrels(path: str | Path) -> Qrels:
    """Read BEIR-tsv (with header) or TREC qrels; the format is detected from the first line."""
    path = Path(path)
    if not path.is_file():
        raise NpdecodeError(f"{path}: no such qrels file")
    judgments: dict[str, dict[str, int]] = {}
    negatives = 0
    for lineno, line in read_lines(path):
        if not line.strip():
            continue
        cols = line.split("\t") if "\t" in line else line.split()
        if lineno == 1 and cols and cols[0].strip().lower() in {"query-id", "query_id", "qid", "query"}:
            continue  # BEIR header
        if len(cols) == 3:
            qid, docid, grade = cols
        elif len(cols) == 4:
            qid, _, docid, grade = cols
        else:
            raise NpdecodeError(
                f"{path}:{lineno}: expected 'query-id<TAB>corpus-id<TAB>score' (BEIR) "
                f"or 'qid 0 docid rel' (TREC), got {len(cols)} columns"
            )
        try:
            rel = int(float(grade))
        except ValueError:
            raise NpdecodeError(f"{path}:{lineno}: relevance {grade.strip()!r} is not a number") from None
        if rel < 0:
            negatives += 1
            rel = 0
        judgments.setdefault(qid.strip(), {})[docid.strip()] = rel
    if not judgments:
        raise NpdecodeError(f"{path}: no judgments")
    return Qrels(judgments=judgments, negatives=negatives, source=str(path))
