"""The on-disk corpus of a build (DocStore) and the column form of the identifier groups.

Oracle: the straightforward identifier procedure (every name held as a string, a Counter per
round; the code before issue 20's compact form) on random corpora full of collisions; the
table over an in-memory dict and over the SQLite store must give exactly its groups.
"""

from __future__ import annotations

import json
import pickle
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npdecode.errors import NpdecodeError
from npdecode.index import identifiers as ids_mod
from npdecode.index.docstore import DocStore
from npdecode.index.identifiers import (
    IdentifierGroup,
    IdentifierTable,
    MemoryDocuments,
    TokenLists,
    assign_identifiers,
    content_digest,
    fit_identifiers,
    fit_table,
    is_empty,
)
from tests.index.test_identifiers import LONG_TITLES, _chars


def reference_identifiers(corpus, max_words=32, taken=()):
    """The identifier procedure written plainly (module docstring of identifiers.py)."""
    norm = ids_mod._normalize
    join = ids_mod._join
    by_digest: dict[str, list[str]] = {}
    for doc_id in sorted(corpus):
        doc = corpus[doc_id]
        if is_empty(doc):
            continue
        by_digest.setdefault(content_digest(doc.get("title") or "", doc.get("text") or ""), []).append(doc_id)
    groups = sorted(((tuple(d), digest) for digest, d in by_digest.items()), key=lambda g: g[0][0])
    taken = set(taken)
    titles = [norm(corpus[d[0]].get("title") or "") for d, _ in groups]
    words = [norm(corpus[d[0]].get("text") or "").split() for d, _ in groups]
    used = [0] * len(groups)
    while True:
        names = [join(titles[i], words[i][: used[i]]) for i in range(len(groups))]
        counts = Counter(names)
        grown = False
        for i, name in enumerate(names):
            if (not name or counts[name] > 1 or name in taken) and used[i] < min(max_words, len(words[i])):
                used[i] += 1
                grown = True
        if not grown:
            break
    names = [join(titles[i], words[i][: used[i]]) for i in range(len(groups))]
    counts = Counter(names)
    final = taken | {n for n in names if counts[n] == 1}
    out = []
    for (doc_ids, digest), name in zip(groups, names):
        if counts[name] > 1 or name in taken:
            name = next(n for n in (join(name, [t]) for t in ids_mod._tags(doc_ids[0])) if n not in final)
            final.add(name)
        doc = corpus[doc_ids[0]]
        out.append(IdentifierGroup(name, doc_ids, digest, doc.get("title") or "", doc.get("text") or ""))
    return out


_word = st.sampled_from(["a", "b", "c", "ä", "a b"])
_doc = st.fixed_dictionaries(
    {
        "title": st.lists(_word, max_size=2).map(" ".join),
        "text": st.lists(_word, max_size=6).map(" ".join),
    }
)
_corpus = st.dictionaries(st.text("xyz0123[] ", min_size=1, max_size=3), _doc, min_size=1, max_size=14)


@settings(max_examples=150, deadline=None)
@given(_corpus, st.integers(1, 4), st.sets(st.sampled_from(["a", "b", "a b", "a [x]", "c a", ""]), max_size=3))
def test_the_table_gives_the_reference_identifiers(corpus, cap, taken):
    assert assign_identifiers(corpus, max_words=cap, taken=taken) == reference_identifiers(corpus, cap, taken)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _store(tmp_path, corpus):
    path = write_jsonl(tmp_path / "corpus.jsonl", [{"_id": k, **v} for k, v in corpus.items()])
    return DocStore.build(path, tmp_path / "corpus.sqlite")


@settings(max_examples=25, deadline=None)
@given(_corpus, st.integers(1, 4))
def test_the_on_disk_store_gives_the_same_groups_as_the_dict(tmp_path_factory, corpus, cap):
    tmp = tmp_path_factory.mktemp("store")
    store, empty = _store(tmp, corpus)
    assert empty == sorted(d for d, doc in corpus.items() if is_empty(doc))
    if not len(store):
        return
    table = IdentifierTable.build(store, cap)
    assert list(table) == reference_identifiers(corpus, cap)
    assert table.n_documents == len(corpus) - len(empty)
    assert [table.identifier(i) for i in range(len(table))] == [g.identifier for g in table]
    assert list(table.inputs()) == [(g.identifier, g.text) for g in table]
    assert list(pickle.loads(pickle.dumps(table))) == list(table)  # what ddp_spawn processes get
    store.close()


def test_the_store_keeps_text_as_written_and_sorts_ids_by_code_point(tmp_path):
    corpus = {
        "b": {"title": "  Spaced   title ", "text": "line\nbreak \U0001f600"},
        "a10": {"title": "T", "text": "x"},
        "a9": {"title": "", "text": "only text"},
        "Z": {"title": "upper", "text": ""},
        "é": {"title": "accent", "text": "y"},
    }
    store, empty = _store(tmp_path, corpus)
    assert empty == []
    rows = [store.row(r) for r in range(len(store))]
    assert rows == [(k, v["title"], v["text"]) for k, v in corpus.items()]
    assert [rows[r][0] for r in store.id_order()] == sorted(corpus)
    assert store.digests().tolist() == [bytes.fromhex(content_digest(v["title"], v["text"])) for v in corpus.values()]
    again = pickle.loads(pickle.dumps(store))  # what a ddp_spawn process gets
    assert again.row(0) == rows[0]


def test_duplicate_ids_are_refused_even_when_one_copy_is_empty(tmp_path):
    for rows in (
        [{"_id": "a", "title": "x", "text": ""}, {"_id": "b", "title": "y"}, {"_id": "a", "title": "z"}],
        [{"_id": "a", "title": "x", "text": ""}, {"_id": "a", "title": "", "text": " "}],
        [{"_id": "e", "title": ""}, {"_id": "e", "text": ""}, {"_id": "k", "title": "k"}],
    ):
        path = write_jsonl(tmp_path / "dup.jsonl", rows)
        with pytest.raises(NpdecodeError, match=r"dup.jsonl: duplicate document id"):
            DocStore.build(path, tmp_path / "dup.sqlite")


def test_token_lists_behave_like_lists():
    lists = [[3, 1], [], [7], [2, 2, 2]]
    tokens = TokenLists.of(lists)
    assert list(tokens) == lists and len(tokens) == 4 and tokens.total == 6
    assert list(tokens[1:3]) == lists[1:3] and list(tokens[3:]) == lists[3:]
    assert tokens[-1] == [2, 2, 2]
    assert list(tokens.replaced({0: [9], 2: [5, 5, 5]})) == [[9], [], [5, 5, 5], [2, 2, 2]]
    assert tokens.lengths.tolist() == [2, 0, 1, 3]


@settings(max_examples=60, deadline=None)
@given(LONG_TITLES, st.integers(7, 20))
def test_cutting_a_table_equals_cutting_the_list(corpus, budget):
    taken = {"a", "b a"}
    groups = assign_identifiers(corpus, taken=taken)
    want, want_tokens = fit_identifiers(groups, [_chars(g.identifier) for g in groups], _chars, budget, taken)
    table = IdentifierTable.build(MemoryDocuments(corpus), taken=taken)
    tokens = fit_table(
        table, TokenLists.of(_chars(table.identifier(i)) for i in range(len(table))), _chars, budget, taken
    )
    assert list(table) == want
    assert list(tokens) == want_tokens
    assert np.array_equal(tokens.flat, np.concatenate([np.asarray(t, np.int32) for t in want_tokens] or [[]]))
