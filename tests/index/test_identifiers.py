"""Identifiers: unique, deterministic, identical documents kept together, clear errors."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npdecode.errors import NpdecodeError
from npdecode.index.identifiers import assign_identifiers


def _ids(groups):
    return {doc: g.identifier for g in groups for doc in g.doc_ids}


def test_title_is_the_identifier_when_unique():
    corpus = {"a": {"title": "Paris", "text": "capital of france"}, "b": {"title": "Rome", "text": "x"}}
    assert _ids(assign_identifiers(corpus)) == {"a": "Paris", "b": "Rome"}


def test_shared_and_empty_titles_are_lengthened_until_unique():
    corpus = {
        "a": {"title": "Mercury", "text": "a planet near the sun"},
        "b": {"title": "Mercury", "text": "a metal that is liquid"},
        "c": {"title": "", "text": "untitled notes about rivers"},
        "d": {"title": "Mercury", "text": "a god of messengers"},
    }
    ids = _ids(assign_identifiers(corpus))
    assert ids == {
        "a": "Mercury a planet",
        "b": "Mercury a metal",
        "c": "untitled",
        "d": "Mercury a god",
    }


def test_identical_documents_share_one_identifier():
    doc = {"title": "Same", "text": "same words here"}
    groups = assign_identifiers({"x": dict(doc), "y": dict(doc), "z": {"title": "Same", "text": "other"}})
    together = [g for g in groups if len(g.doc_ids) == 2]
    assert len(together) == 1 and together[0].doc_ids == ("x", "y")
    assert len({g.identifier for g in groups}) == 2


def test_cap_falls_back_to_doc_id_and_stays_unique():
    corpus = {
        "a": {"title": "T", "text": "one two three four"},
        "b": {"title": "T", "text": "one two three five"},
    }
    ids = _ids(assign_identifiers(corpus, max_words=2))
    assert ids == {"a": "T one two [a]", "b": "T one two [b]"}


def test_taken_identifiers_are_avoided():
    corpus = {"n": {"title": "Paris", "text": "a new document"}}
    assert _ids(assign_identifiers(corpus, taken={"Paris"})) == {"n": "Paris a"}


def test_empty_document_is_a_clear_error():
    with pytest.raises(NpdecodeError, match="'e'.*empty title and text"):
        assign_identifiers({"ok": {"title": "A", "text": ""}, "e": {"title": " ", "text": "  "}})


_word = st.sampled_from(["a", "b", "c", "d"])
_doc = st.fixed_dictionaries(
    {
        "title": st.lists(_word, max_size=2).map(" ".join),
        "text": st.lists(_word, min_size=1, max_size=6).map(" ".join),
    }
)


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(st.text("xyz0123", min_size=1, max_size=3), _doc, min_size=1, max_size=12),
    st.integers(1, 4),
    st.randoms(use_true_random=False),
)
def test_unique_deterministic_and_order_free(corpus, cap, rnd):
    groups = assign_identifiers(corpus, max_words=cap)
    names = [g.identifier for g in groups]
    assert len(names) == len(set(names))
    assert sorted(d for g in groups for d in g.doc_ids) == sorted(corpus)
    # identical documents and only those share a group
    for g in groups:
        assert len({(corpus[d]["title"], corpus[d]["text"]) for d in g.doc_ids}) == 1
    keys = list(corpus)
    rnd.shuffle(keys)
    assert assign_identifiers({k: corpus[k] for k in keys}, max_words=cap) == groups
