"""Step 1 of Np Decoding: one identifier string per group of identical documents.

The identifier is the title. Where a title is empty or shared, the first words of the text are
appended, one more word per round, until the identifier is unique or ``max_words`` is reached;
identifiers still shared at the cap get the group's first document id in brackets, so the
result is always unique. Documents with the same title and text form one group and share one
identifier (decoding it returns all of them).

The procedure depends only on the set of documents, not their order: groups are sorted by
their first document id and every round lengthens all colliding identifiers at once.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from npdecode.errors import NpdecodeError


@dataclass(frozen=True)
class IdentifierGroup:
    """Documents that share one identifier (identical title and text)."""

    identifier: str
    doc_ids: tuple[str, ...]
    digest: str  # sha1 of title + text: how an appended identical document finds its group
    title: str
    text: str


def content_digest(title: str, text: str) -> str:
    """A stable digest of a document's normalized title and text."""
    payload = f"{_normalize(title)}\x00{_normalize(text)}".encode()
    return hashlib.sha1(payload).hexdigest()


def assign_identifiers(
    corpus: Mapping[str, Mapping[str, str]],
    max_words: int = 32,
    taken: Iterable[str] = (),
) -> list[IdentifierGroup]:
    """Group identical documents and give each group a unique identifier.

    ``corpus`` maps doc id -> {"title", "text"}. ``taken`` are identifiers that already exist
    (an index being appended to): they are never changed and new identifiers avoid them.
    Returns the groups sorted by their first document id. A document with neither title nor
    text has no possible identifier: NpdecodeError naming it.
    """
    groups = _group_identical(corpus)
    taken = set(taken)
    titles = [_normalize(g[1]) for g in groups]
    words = [_normalize(g[2]).split() for g in groups]
    used = [0] * len(groups)  # words of text appended so far
    while True:
        names = [_join(titles[i], words[i][: used[i]]) for i in range(len(groups))]
        counts = Counter(names)
        grown = False
        for i, name in enumerate(names):
            colliding = not name or counts[name] > 1 or name in taken
            if colliding and used[i] < min(max_words, len(words[i])):
                used[i] += 1
                grown = True
        if not grown:
            break
    names = [_join(titles[i], words[i][: used[i]]) for i in range(len(groups))]
    counts = Counter(names)
    result = []
    for (doc_ids, title, text, digest), name in zip(groups, names):
        if not name:
            raise NpdecodeError(
                f"document {doc_ids[0]!r}: empty title and text, so it has no identifier; "
                "remove it from the corpus or give it a title"
            )
        if counts[name] > 1 or name in taken:
            # Same title and the same first `max_words` words: the doc id settles it.
            name = f"{name} [{doc_ids[0]}]"
        result.append(IdentifierGroup(name, doc_ids, digest, title, text))
    return result


def _group_identical(corpus: Mapping[str, Mapping[str, str]]) -> list[tuple]:
    """[(doc_ids, title, text, digest)] for each set of identical documents, by first doc id."""
    by_digest: dict[str, list[str]] = {}
    for doc_id in sorted(corpus):
        doc = corpus[doc_id]
        digest = content_digest(doc.get("title") or "", doc.get("text") or "")
        by_digest.setdefault(digest, []).append(doc_id)
    groups = []
    for digest, doc_ids in by_digest.items():
        doc = corpus[doc_ids[0]]
        groups.append((tuple(doc_ids), doc.get("title") or "", doc.get("text") or "", digest))
    groups.sort(key=lambda g: g[0][0])
    return groups


def _normalize(value: str) -> str:
    return " ".join(value.split())


def _join(title: str, words: list[str]) -> str:
    return " ".join([title, *words]) if title else " ".join(words)
