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

The groups are kept in columns (:class:`IdentifierTable`, :class:`TokenLists`): member rows,
one digest and a 64-bit hash of the name per group, titles and texts read back from the
documents (a dict, or the on-disk :class:`~npdecode.index.docstore.DocStore` of a build); only
the texts of colliding groups are split into words. Names are compared by hash and, where
hashes repeat, as strings, so the outcome is exactly the procedure above
(tests/index/test_docstore.py checks it against a plain implementation).
"""

from __future__ import annotations

import array
import functools
import hashlib
import itertools
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import xxhash

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
    return list(IdentifierTable.build(MemoryDocuments(corpus), max_words, taken))


class MemoryDocuments:
    """The documents interface of :class:`IdentifierTable` over a corpus dict (its non-empty
    documents, rows in dict order); :class:`npdecode.index.docstore.DocStore` is the on-disk one."""

    def __init__(self, corpus: Mapping[str, Mapping[str, str]]) -> None:
        self.rows = [
            (doc_id, doc.get("title") or "", doc.get("text") or "")
            for doc_id, doc in corpus.items()
            if not is_empty(doc)
        ]

    def __len__(self) -> int:
        return len(self.rows)

    def row(self, r: int) -> tuple[str, str, str]:
        return self.rows[r]

    def doc_id(self, r: int) -> str:
        return self.rows[r][0]

    def digests(self) -> np.ndarray:
        return np.array([bytes.fromhex(content_digest(t, x)) for _, t, x in self.rows], dtype="S20")

    def id_order(self) -> np.ndarray:
        return np.array(sorted(range(len(self.rows)), key=lambda r: self.rows[r][0]), dtype=np.int64)


class TokenLists(Sequence):
    """Token ids of every identifier in one flat int32 array + int64 offsets (CSR): 4 bytes per
    identifier token instead of a Python list of ints per identifier."""

    def __init__(self, flat: np.ndarray, offsets: np.ndarray) -> None:
        self.flat, self.offsets = flat, offsets

    @classmethod
    def of(cls, lists: Iterable[Sequence[int]]) -> TokenLists:
        if isinstance(lists, TokenLists):
            return lists
        flat, offsets = array.array("i"), array.array("q", [0])
        for ids in lists:
            flat.extend(ids)
            offsets.append(len(flat))
        return cls(np.frombuffer(flat, dtype=np.int32).copy(), np.frombuffer(offsets, dtype=np.int64).copy())

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i):
        if isinstance(i, slice):
            lo, hi, step = i.indices(len(self))
            if step != 1:
                raise ValueError("TokenLists slices take step 1")
            hi = max(hi, lo)
            flat = self.flat[self.offsets[lo] : self.offsets[hi]]
            return TokenLists(flat, self.offsets[lo : hi + 1] - self.offsets[lo])
        if i < 0:
            i += len(self)
        return self.flat[self.offsets[i] : self.offsets[i + 1]].tolist()

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def total(self) -> int:
        return int(self.offsets[-1])

    def replaced(self, new: Mapping[int, Sequence[int]]) -> TokenLists:
        """A copy with the lists of the given indices replaced."""
        if not new:
            return self
        pieces, at = [], 0
        for i in sorted(new):
            pieces += [self.flat[self.offsets[at] : self.offsets[i]], np.asarray(new[i], dtype=np.int32)]
            at = i + 1
        pieces.append(self.flat[self.offsets[at] :])
        lengths = self.lengths
        lengths[list(new)] = [len(new[i]) for i in new]
        offsets = np.zeros(len(self) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return TokenLists(np.concatenate(pieces), offsets)


class IdentifierTable(Sequence):
    """The identifier groups of a corpus in columns: ``table[i]`` is the :class:`IdentifierGroup`
    :func:`assign_identifiers` gives, made on demand from the documents (a dict in memory or the
    on-disk :class:`~npdecode.index.docstore.DocStore`), the member rows (CSR), one digest per
    group and the few identifiers that are not simply the title (lengthened, tagged or cut).
    Per group it holds ~40 bytes, not the strings, so a 5.9M-page corpus fits a small process."""

    def __init__(self, docs, members: np.ndarray, ptr: np.ndarray, digests: np.ndarray, names: _Names) -> None:
        self.docs, self.members, self.ptr, self.digests, self.names = docs, members, ptr, digests, names
        self.cut: dict[int, str] = {}

    @classmethod
    def build(cls, docs, max_words: int = 32, taken: Iterable[str] = ()) -> IdentifierTable:
        """Groups of identical documents (by first doc id) with unique identifiers (module docstring)."""
        order = docs.id_order()
        digests = docs.digests()[order]
        _, first, inverse = np.unique(digests, return_index=True, return_inverse=True)
        rank = np.empty(len(first), dtype=np.int64)
        rank[np.argsort(first, kind="stable")] = np.arange(len(first))
        group_of = rank[inverse.reshape(-1)]  # group of each document, in doc id order
        members = order[np.argsort(group_of, kind="stable")]
        ptr = np.zeros(len(first) + 1, dtype=np.int64)
        np.cumsum(np.bincount(group_of, minlength=len(first)), out=ptr[1:])
        firsts = _FirstDocuments(docs, members[ptr[:-1]])
        names = _unique_names(len(ptr) - 1, firsts.title, firsts.text, firsts.doc_id, max_words, set(taken))
        return cls(docs, members, ptr, digests[np.sort(first)], names)

    def __len__(self) -> int:
        return len(self.ptr) - 1

    @property
    def n_documents(self) -> int:
        return len(self.members)

    def first_row(self, i: int) -> int:
        return int(self.members[self.ptr[i]])

    def first_doc_id(self, i: int) -> str:
        return self.docs.doc_id(self.first_row(i))

    def identifier(self, i: int) -> str:
        return self.cut.get(i) or self.names[i]

    def text(self, i: int) -> str:
        return self.docs.row(self.first_row(i))[2]

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        rows = self.members[self.ptr[i] : self.ptr[i + 1]]
        _, title, text = self.docs.row(int(rows[0]))
        doc_ids = tuple(self.docs.doc_id(int(r)) for r in rows)
        digest = self.digests[i : i + 1].tobytes().hex()  # element access would drop trailing zero bytes
        return IdentifierGroup(self.identifier(i), doc_ids, digest, title, text, i in self.cut)

    def inputs(self) -> Sequence[tuple[str, str]]:
        """``(identifier, text)`` of each group, read on demand: what CE extraction encodes."""
        return _Inputs(self)

    def cut_doc_ids(self) -> list[str]:
        """First doc id of each group whose identifier was cut, in group order."""
        return [self.first_doc_id(i) for i in sorted(self.cut)]


class _FirstDocuments:
    """Normalized title, text and doc id of each group's first document (picklable: a
    ddp_spawn process gets the table)."""

    def __init__(self, docs, rows: np.ndarray) -> None:
        self.docs, self.rows = docs, rows

    def title(self, i: int) -> str:
        return _normalize(self.docs.row(int(self.rows[i]))[1])

    def text(self, i: int) -> str:
        return self.docs.row(int(self.rows[i]))[2]

    def doc_id(self, i: int) -> str:
        return self.docs.doc_id(int(self.rows[i]))


class _Inputs(Sequence):
    def __init__(self, table: IdentifierTable) -> None:
        self.table = table

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, i):
        return self.table.identifier(i), self.table.text(i)


def _hash(name: str) -> int:
    return xxhash.xxh3_64_intdigest(name.encode("utf-8", "surrogatepass"))


class _NameSet:
    """Membership among many names without a set of strings: their 64-bit hashes sorted, each
    hash hit checked against the name itself (``name_of(index)``); ``add`` keeps a few more."""

    def __init__(self, hashes: np.ndarray, indices: np.ndarray, name_of: Callable[[int], str], extra=()) -> None:
        order = np.argsort(hashes, kind="stable")
        self.hashes, self.indices, self.name_of = hashes[order], indices[order], name_of
        self.extra = set(extra)

    def __contains__(self, name: str) -> bool:
        if name in self.extra:
            return True
        h = np.uint64(_hash(name))
        lo, hi = np.searchsorted(self.hashes, h, "left"), np.searchsorted(self.hashes, h, "right")
        return any(self.name_of(int(j)) == name for j in self.indices[lo:hi])

    def add(self, name: str) -> None:
        self.extra.add(name)


class _Names:
    """Group ``i``'s identifier before any cut: its normalized title followed by the first
    ``used[i]`` words of its text, or ``tagged[i]``."""

    def __init__(self, title_of: Callable[[int], str], used: np.ndarray, words: dict, tagged: dict) -> None:
        self.title_of, self.used, self.words, self.tagged = title_of, used, words, tagged

    def __getitem__(self, i: int) -> str:
        tagged = self.tagged.get(i)
        if tagged is not None:
            return tagged
        u = int(self.used[i])
        return _join(self.title_of(i), self.words[i][:u]) if u else self.title_of(i)


def _name_counts(hashes: np.ndarray, name_of: Callable[[int], str]) -> np.ndarray:
    """How many groups have each group's name: by hash, names compared where hashes repeat."""
    _, inverse, counts = np.unique(hashes, return_inverse=True, return_counts=True)
    per = counts[inverse.reshape(-1)]
    dup = np.flatnonzero(per > 1)
    if len(dup):
        names = [name_of(int(i)) for i in dup]
        exact = Counter(names)
        per[dup] = [exact[n] for n in names]
    return per


def _unique_names(
    n: int,
    title_of: Callable[[int], str],
    text_of: Callable[[int], str],
    doc_id_of: Callable[[int], str],
    max_words: int,
    taken: set[str],
) -> _Names:
    """Unique names for ``n`` groups (module docstring): colliding names (empty, shared, taken)
    all grow by one word of their text per round, until none can; names still shared at the cap
    get the group's first doc id as a tag. Only colliding groups' texts are split into words."""
    used = np.zeros(n, dtype=np.int32)
    words: dict[int, list[str]] = {}
    names = _Names(title_of, used, words, {})
    hashes = np.empty(n, dtype=np.uint64)
    blank = np.zeros(n, dtype=bool)
    in_taken = np.zeros(n, dtype=bool)

    def refresh(i: int) -> None:
        name = names[i]
        hashes[i], blank[i], in_taken[i] = _hash(name), not name, name in taken

    for i in range(n):
        refresh(i)
    while True:
        colliding = np.flatnonzero(blank | (_name_counts(hashes, names.__getitem__) > 1) | in_taken)
        grown = []
        for i in colliding.tolist():
            w = words.get(i)
            if w is None:
                w = words[i] = _normalize(text_of(i)).split()
            if used[i] < min(max_words, len(w)):
                used[i] += 1
                grown.append(i)
        if not grown:
            break
        for i in grown:
            refresh(i)
    for i in list(words):  # keep only the words in use
        if used[i]:
            words[i] = words[i][: used[i]]
        else:
            del words[i]
    counts = _name_counts(hashes, names.__getitem__)
    tag = np.flatnonzero((counts > 1) | in_taken)
    if len(tag):
        unique = np.flatnonzero(counts == 1)
        final = _NameSet(hashes[unique], unique, names.__getitem__, extra=taken)
        tagged = {}
        for i in tag.tolist():
            # Same title and the same first `max_words` words: the doc id settles it (numbered
            # in the rare case the tagged name is taken too, e.g. a --replace of that document).
            base = names[i]
            name = next(c for c in (_join(base, [t]) for t in _tags(doc_id_of(i))) if c not in final)
            final.add(name)
            tagged[i] = name
        names.tagged.update(tagged)
    return names


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
    long_set = set(long)
    used = set(taken) | {g.identifier for i, g in enumerate(groups) if i not in long_set}
    cut = cut_identifiers(
        long, lambda i: groups[i].identifier, lambda i: groups[i].doc_ids[0], tokenize, max_tokens, used
    )
    result = list(groups)
    for i, name in cut.items():
        result[i] = replace(groups[i], identifier=name, cut=True)
        tokens[i] = list(tokenize(name))
    return result, tokens


def fit_table(
    table: IdentifierTable,
    tokens: TokenLists,
    tokenize: Callable[[str], Sequence[int]],
    max_tokens: int,
    taken: Iterable[str] = (),
) -> TokenLists:
    """:func:`fit_identifiers` on an :class:`IdentifierTable` (its ``cut`` filled in place);
    returns the tokens with the cut identifiers' ones. The identifiers in use are looked up by
    hash (:class:`_NameSet`), not held as a set of strings."""
    long = np.flatnonzero(tokens.lengths > max_tokens).tolist()
    if not long:
        return tokens
    every = np.arange(len(table))
    hashes = np.fromiter((_hash(table.identifier(i)) for i in every), dtype=np.uint64, count=len(table))
    # a long identifier never equals a cut one (it has more tokens), so all of them may stay in
    used = _NameSet(hashes, every, table.identifier, extra=taken)
    cut = cut_identifiers(long, table.identifier, table.first_doc_id, tokenize, max_tokens, used)
    table.cut.update(cut)
    return tokens.replaced({i: list(tokenize(name)) for i, name in cut.items()})


def cut_identifiers(
    long: Sequence[int],
    identifier_of: Callable[[int], str],
    doc_id_of: Callable[[int], str],
    tokenize: Callable[[str], Sequence[int]],
    max_tokens: int,
    used,
) -> dict[int, str]:
    """The cut identifier of each group in ``long`` (:func:`fit_identifiers`); ``used`` (with
    ``in`` and ``add``) holds the identifiers in use and gets the new ones."""

    @functools.cache
    def fits(name: str) -> bool:
        return 0 < len(tokenize(name)) <= max_tokens

    cut = {i: _longest_prefix(identifier_of(i).split(), None, fits) for i in long}
    counts = Counter(cut.values())
    out = {}
    for i in long:  # group order: the outcome depends only on the set of documents
        name = cut[i]
        if not name or counts[name] > 1 or name in used:
            name = _tagged(identifier_of(i).split(), doc_id_of(i), fits, used, max_tokens)
        used.add(name)
        out[i] = name
    return out


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


def _normalize(value: str) -> str:
    return " ".join(value.split())


def _join(title: str, words: list[str]) -> str:
    return " ".join([title, *words]) if title else " ".join(words)
