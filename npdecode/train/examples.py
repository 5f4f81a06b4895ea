"""Training examples: (encoder text -> document identifier group), built once and tokenized once.

Three kinds (docs/np-decoding.md, step 8):

- ``query``: a training query -> each document it judges relevant (grade > 0);
- ``index``: a document's text -> its identifier (DSI indexing examples; every document gets one);
- ``pseudo``: text drawn from the document (a sentence, a span, its lead) -> its identifier.

Targets are identifier *groups* of the run's index (documents with one identifier share one
target), so the model learns exactly the sequences the decoder's trie holds. Part of the
training queries is held out for validation; without any, validation decodes indexing
examples (memorisation).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from npdecode.train.config import DataConfig, PseudoQueries

log = logging.getLogger(__name__)
KINDS = ("query", "index", "pseudo")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclass
class Examples:
    """Example texts, their kinds and target groups (parallel lists)."""

    texts: list[str] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    groups: list[int] = field(default_factory=list)

    def add(self, text: str, kind: str, group: int) -> None:
        if text.strip():
            self.texts.append(text)
            self.kinds.append(kind)
            self.groups.append(group)

    def counts(self) -> dict[str, int]:
        return {k: self.kinds.count(k) for k in KINDS}


@dataclass
class ValidationSet:
    """Held-out queries and their judgments, in the BEIR contract; ``kind`` says what they are."""

    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    kind: str  # "queries" (held-out training queries) or "memorisation" (indexing examples)


def pseudo_queries(doc_id: str, text: str, spec: PseudoQueries, seed: int) -> list[str]:
    """``spec.per_document`` pseudo-queries of the kinds in ``spec.kinds`` (cycled), seeded by doc id."""
    if spec.per_document == 0 or not text.strip():
        return []
    rng = random.Random(zlib.crc32(f"{seed}:{doc_id}".encode()))
    words = text.split()
    sentences = [s for s in _SENTENCE_END.split(text.strip()) if len(s.split()) >= 3] or [text.strip()]
    out = []
    for i in range(spec.per_document):
        kind = spec.kinds[i % len(spec.kinds)]
        if kind == "sentence":
            out.append(rng.choice(sentences))
        elif kind == "lead":
            out.append(" ".join(words[: spec.span_words]))
        else:
            start = rng.randrange(max(1, len(words) - spec.span_words + 1))
            out.append(" ".join(words[start : start + spec.span_words]))
    return out


def doc_groups(members: list[list[tuple[str, int]]]) -> dict[str, int]:
    """doc id -> identifier group index, from an index's membership lists."""
    return {doc_id: g for g, docs in enumerate(members) for doc_id, _ in docs}


def build_examples(
    corpus: Mapping[str, Mapping[str, str]],
    group_of: Mapping[str, int],
    queries: Mapping[str, str],
    qrels: Mapping[str, Mapping[str, int]],
    config: DataConfig,
    *,
    n_validation: int,
    seed: int,
) -> tuple[Examples, ValidationSet]:
    """The training examples and the validation set of a run (deterministic for a seed)."""
    judged = sorted(
        q for q, rel in qrels.items() if q in queries and any(v > 0 and d in group_of for d, v in rel.items())
    )
    random.Random(seed).shuffle(judged)
    held = sorted(judged[:n_validation]) if len(judged) > n_validation else []
    train_qids = sorted(set(judged) - set(held))
    ex = Examples()
    for _ in range(config.query_repeat):
        for qid in train_qids:
            for doc_id in sorted(qrels[qid]):
                if qrels[qid][doc_id] > 0 and doc_id in group_of:
                    ex.add(queries[qid], "query", group_of[doc_id])
    for doc_id in sorted(group_of):
        doc = corpus[doc_id]
        if config.index_examples:
            ex.add(index_input(doc, config), "index", group_of[doc_id])
        for text in pseudo_queries(doc_id, doc.get("text", ""), config.pseudo_queries, seed):
            ex.add(text, "pseudo", group_of[doc_id])
    if held:
        validation = ValidationSet(
            {q: queries[q] for q in held}, {q: {d: int(v) for d, v in qrels[q].items()} for q in held}, "queries"
        )
    else:
        validation = _memorisation_set(corpus, group_of, config, n_validation, seed)
    return ex, validation


def index_input(doc: Mapping[str, str], config: DataConfig) -> str:
    """The encoder text of a document's indexing example (the title too when asked, or when
    the document has no text)."""
    text, title = doc.get("text", "").strip(), doc.get("title", "").strip()
    if config.index_input == "title_text" or not text:
        return f"{title} {text}".strip()
    return text


def _memorisation_set(corpus, group_of, config: DataConfig, n: int, seed: int) -> ValidationSet:
    doc_ids = sorted(group_of)
    random.Random(seed + 1).shuffle(doc_ids)
    picked = sorted(doc_ids[:n])
    queries = {f"mem-{d}": index_input(corpus[d], config) for d in picked}
    qrels = {f"mem-{d}": {d: 1} for d in picked}
    return ValidationSet(queries, qrels, "memorisation")


@dataclass
class Tokenized:
    """Encoder inputs of all examples as one flat array with offsets (CSR): row i is
    ``ids[ptr[i]:ptr[i+1]]`` (special tokens included, cut to ``max_length``)."""

    ids: np.ndarray  # (N_tokens,) int32
    ptr: np.ndarray  # (N + 1,) int64

    def row(self, i: int) -> np.ndarray:
        return self.ids[self.ptr[i] : self.ptr[i + 1]]

    def __len__(self) -> int:
        return len(self.ptr) - 1


def tokenize_examples(tokenizer, texts: list[str], max_length: int, cache: Path | None = None) -> Tokenized:
    """Tokenize ``texts`` (in chunks, fast tokenizer) or read the cache written for the same
    texts, tokenizer and length (``cache``: a ``.npz`` path)."""
    key = _token_key(tokenizer, texts, max_length)
    if cache is not None and cache.is_file():
        data = np.load(cache)
        if str(data["key"]) == key:
            return Tokenized(data["ids"], data["ptr"])
    rows: list[list[int]] = []
    for lo in range(0, len(texts), 4096):
        rows += tokenizer(texts[lo : lo + 4096], truncation=True, max_length=max_length)["input_ids"]
    ptr = np.zeros(len(rows) + 1, dtype=np.int64)
    ptr[1:] = np.cumsum([len(r) for r in rows])
    ids = np.fromiter((t for r in rows for t in r), dtype=np.int32, count=int(ptr[-1]))
    if cache is not None:
        from npdecode.atomic import atomic_file

        with atomic_file(cache, "wb") as fh:
            np.savez(fh, ids=ids, ptr=ptr, key=np.array(key))
    return Tokenized(ids, ptr)


def _token_key(tokenizer, texts: list[str], max_length: int) -> str:
    digest = hashlib.sha256(json.dumps([type(tokenizer).__name__, len(tokenizer), max_length]).encode())
    for text in texts:
        digest.update(text.encode("utf-8", "surrogatepass") + b"\0")
    return digest.hexdigest()
