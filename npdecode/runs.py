"""Run files (TREC 6-column) and metrics JSON.

A run is ``{qid: {doc_id: score}}``. Ranked order everywhere in npdecode is the deterministic
``(-score, doc_id)``: higher score first, ties broken by ascending doc id, as pyserini does.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

from npdecode.atomic import atomic_file
from npdecode.corpus import read_lines
from npdecode.errors import NpdecodeError

Run = dict[str, dict[str, float]]


def ranked(scores: Mapping[str, float], k: int | None = None) -> list[tuple[str, float]]:
    """``[(doc_id, score)]`` sorted by ``(-score, doc_id)``, cut to ``k`` when given."""
    items = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))
    return items if k is None else items[:k]


def truncate_run(run: Mapping[str, Mapping[str, float]], k: int) -> Run:
    """A new run with each query's top ``k`` documents (input untouched)."""
    return {qid: dict(ranked(docs, k)) for qid, docs in run.items()}


def write_run(run: Mapping[str, Mapping[str, float]], path: str | Path, tag: str = "npdecode") -> None:
    """Write a TREC run atomically: ``qid Q0 docid rank score tag``, ranks from 1."""
    with atomic_file(path) as fh:
        for qid in sorted(run):
            for rank, (docid, score) in enumerate(ranked(run[qid]), start=1):
                if not math.isfinite(score):
                    raise NpdecodeError(f"run for query {qid!r} has a non-finite score for {docid!r}")
                fh.write(f"{qid} Q0 {docid} {rank} {score:.6f} {tag}\n")


def read_run(path: str | Path) -> Run:
    """Read a TREC 6-column run; malformed lines and NaN scores name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise NpdecodeError(f"{path}: no such run file")
    run: Run = {}
    for lineno, line in read_lines(path):
        if not line.strip():
            continue
        cols = line.split()
        if len(cols) != 6:
            raise NpdecodeError(f"{path}:{lineno}: expected 6 columns 'qid Q0 docid rank score tag', got {len(cols)}")
        qid, _, docid, _, score, _ = cols
        try:
            value = float(score)
        except ValueError:
            raise NpdecodeError(f"{path}:{lineno}: score {score!r} is not a number") from None
        if not math.isfinite(value):
            raise NpdecodeError(f"{path}:{lineno}: score is {score}; runs need finite scores")
        docs = run.setdefault(qid, {})
        if docid in docs:
            raise NpdecodeError(f"{path}:{lineno}: document {docid!r} appears twice for query {qid!r}")
        docs[docid] = value
    return run


def write_metrics(metrics: Mapping, path: str | Path) -> None:
    """Write a metrics mapping as indented JSON, atomically."""
    with atomic_file(path) as fh:
        json.dump(metrics, fh, indent=2, sort_keys=False)
        fh.write("\n")
