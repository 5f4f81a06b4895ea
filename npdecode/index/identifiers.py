"""Step 1 of Np Decoding: one identifier string per group of identical documents.

The identifier is the title. Where a title is empty or shared, the first words of the text are
appended, one more word per round, until the identifier is unique or ``max_words`` is reached;
identifiers still shared at the cap get the group's first document id in brackets, so the
result is always unique. Documents with the same title and text form one group and share one
identifier (decoding it returns all of them).

The procedure depends only on the set of documents, not their order: groups are sorted by
their first document id and every round lengthens all colliding identifiers at once.

A document with neither title nor text has no possible identifier: :func:`split_empty` finds
them and :func:`assign_identifiers` leaves them out. :func:`fit_identifiers` cuts identifiers
whose tokens would not fit the encoder input (step 2 encodes ``identifier + text`` within
``max_length`` tokens, the identifier whole), keeping them unique.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace

from npdecode.errors import NpdecodeError


@dataclass(frozen=True)
class IdentifierGroup:
    """Documents that share one identifier (identical title and text)."""

    identifier: str
    doc_ids: tuple[str, ...]
    digest: str  # sha1 of title + text: how an appended identical document finds its group
    title: str
    text: str
    cut: bool = False  # the identifier was cut to the token budget (fit_identifiers)


def is_empty(doc: Mapping[str, str]) -> bool:
    """True for a document with neither title nor text once whitespace is normalized."""
    return not _normalize(doc.get("title") or "") and not _normalize(doc.get("text") or "")


def split_empty(corpus: Mapping[str, Mapping[str, str]]) -> tuple[dict[str, Mapping[str, str]], list[str]]:
    """(the documents with a title or text, the sorted ids of those with neither)."""
    kept = {doc_id: doc for doc_id, doc in corpus.items() if not is_empty(doc)}
    return kept, sorted(doc_id for doc_id in corpus if doc_id not in kept)


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
    Returns the groups sorted by their first document id. Documents with neither title nor
    text have no identifier and are left out (:func:`split_empty` names them).
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
    final = taken | {name for name in names if counts[name] == 1}
    result = []
    for (doc_ids, title, text, digest), name in zip(groups, names):
        if counts[name] > 1 or name in taken:
            # Same title and the same first `max_words` words: the doc id settles it (numbered
            # in the rare case the tagged name is taken too, e.g. a --replace of that document).
            name = next(n for n in (_join(name, [t]) for t in _tags(doc_ids[0])) if n not in final)
            final.add(name)
        result.append(IdentifierGroup(name, doc_ids, digest, title, text))
    return result


def fit_identifiers(
    groups: Sequence[IdentifierGroup],
    tokens: Sequence[Sequence[int]],
    tokenize: Callable[[str], Sequence[int]],
    max_tokens: int,
    taken: Iterable[str] = (),
) -> tuple[list[IdentifierGroup], list[list[int]]]:
    """Cut every identifier with more than ``max_tokens`` tokens so that it fits; keep all unique.

    ``tokens`` are the identifiers' token ids (``tokenize`` of each). A long identifier keeps
    its longest word prefix that fits (the first word's longest character prefix if even that
    word alone is too long): a string, so the trie, the targets and the CE positions all use
    ``tokenize`` of the one stored identifier. A cut identifier that collides with another one
    or with ``taken`` gets its first doc id in brackets, after a shorter prefix so that the tag
    fits too. Returns (groups, tokens); cut groups have ``cut=True``. Only a budget too small
    for any bracketed tag raises NpdecodeError.
    """
    tokens = [list(t) for t in tokens]
    long = [i for i, t in enumerate(tokens) if len(t) > max_tokens]
    if not long:
        return list(groups), tokens

    @functools.cache
    def fits(name: str) -> bool:
        return 0 < len(tokenize(name)) <= max_tokens

    long_set = set(long)
    used = set(taken) | {g.identifier for i, g in enumerate(groups) if i not in long_set}
    cut = {i: _longest_prefix(groups[i].identifier.split(), None, fits) for i in long}
    counts = Counter(cut.values())
    result = list(groups)
    for i in long:  # group order: the outcome depends only on the set of documents
        group, name = groups[i], cut[i]
        if not name or counts[name] > 1 or name in used:
            name = _tagged(group.identifier.split(), group.doc_ids[0], fits, used, max_tokens)
        used.add(name)
        result[i] = replace(group, identifier=name, cut=True)
        tokens[i] = list(tokenize(name))
    return result, tokens


def _longest_prefix(words: list[str], tag: str | None, fits: Callable[[str], bool]) -> str:
    """The longest ``words[:n]`` (followed by ``tag``, if given) that fits; "" if none does.

    Binary search over ``n``: token counts grow with the prefix, and only a checked candidate
    is ever returned. Without a tag and with not even the first word fitting (a long URL, a
    run of symbols), the first word's longest character prefix.
    """

    def name(n: int) -> str:
        return " ".join([*words[:n], *([tag] if tag else [])])

    best = ""
    lo, hi = (0 if tag else 1), len(words)
    while lo <= hi:
        mid = (lo + hi) // 2
        if fits(name(mid)):
            best, lo = name(mid), mid + 1
        else:
            hi = mid - 1
    if best or tag or not words:
        return best
    word = words[0]
    lo, hi = 1, len(word) - 1
    while lo <= hi:
        mid = (lo + hi) // 2
        if fits(word[:mid]):
            best, lo = word[:mid], mid + 1
        else:
            hi = mid - 1
    return best


def _tagged(words: list[str], doc_id: str, fits: Callable[[str], bool], used: set[str], max_tokens: int) -> str:
    """``words`` cut so that a bracketed tag fits after them, and not in ``used``."""
    for tag in _tags(doc_id, fits):
        name = _longest_prefix(words, tag, fits)
        if name and name not in used:
            return name
    raise NpdecodeError(
        f"document {doc_id!r}: its identifier is longer than the {max_tokens} tokens max_length "
        "leaves, and no unique shorter one fits; raise max_length"
    )


def _tags(doc_id: str, fits: Callable[[str], bool] | None = None) -> Iterator[str]:
    """Bracketed tags that tell colliding identifiers apart, in order of preference: the doc
    id, then numbered (``[id 2]``, ...). With ``fits``, only tags that fit alone, and ``[#n]``
    once the doc id no longer does (numbers only grow, so a tag that does not fit ends a kind)."""
    for n in itertools.count(1):
        tag = f"[{doc_id}]" if n == 1 else f"[{doc_id} {n}]"
        if fits is not None and not fits(tag):
            break
        yield tag
    for n in itertools.count(1):
        if not fits(f"[#{n}]"):
            return
        yield f"[#{n}]"


def _group_identical(corpus: Mapping[str, Mapping[str, str]]) -> list[tuple]:
    """[(doc_ids, title, text, digest)] for each set of identical documents, by first doc id."""
    by_digest: dict[str, list[str]] = {}
    for doc_id in sorted(corpus):
        doc = corpus[doc_id]
        if is_empty(doc):
            continue
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
