"""Identifiers: unique, deterministic, identical documents kept together, clear errors."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npdecode.errors import NpdecodeError
from npdecode.index.identifiers import assign_identifiers, fit_identifiers, split_empty


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


def test_empty_documents_are_left_out_and_named():
    corpus = {"ok": {"title": "A", "text": ""}, "e": {"title": " ", "text": " \n "}, "n": {"title": None, "text": ""}}
    assert _ids(assign_identifiers(corpus)) == {"ok": "A"}
    kept, empty = split_empty(corpus)
    assert list(kept) == ["ok"] and empty == ["e", "n"]


def test_a_tagged_name_that_is_taken_is_numbered():
    corpus = {"a": {"title": "T", "text": "one two"}, "b": {"title": "T", "text": "one two three"}}
    assert _ids(assign_identifiers(corpus, max_words=2, taken={"T one two [a]"})) == {
        "a": "T one two [a 2]",
        "b": "T one two [b]",
    }


def _chars(name):
    """A tokenizer with one token per non-space character."""
    return [ord(c) for c in name if c != " "]


def _fit(corpus, budget, taken=()):
    groups = assign_identifiers(corpus, taken=taken)
    groups, tokens = fit_identifiers(groups, [_chars(g.identifier) for g in groups], _chars, budget, taken)
    assert tokens == [_chars(g.identifier) for g in groups]  # the tokens are the stored identifier's
    return {d: (g.identifier, g.cut) for g in groups for d in g.doc_ids}


def test_long_identifiers_are_cut_on_a_word_boundary_and_stay_unique():
    corpus = {
        "a": {"title": "alpha beta gamma delta epsilon", "text": "x"},
        "b": {"title": "alpha beta gamma delta zeta", "text": "y"},  # same first 12 tokens as a
        "c": {"title": "alpha beta", "text": "z"},  # what a and b would both be cut to
        "d": {"title": "supercalifragilistic", "text": "w"},  # one word over the budget
        "e": {"title": "short", "text": ""},
    }
    assert _fit(corpus, 12) == {
        "a": ("alpha beta [a]", True),
        "b": ("alpha beta [b]", True),
        "c": ("alpha beta", False),
        "d": ("supercalifra", True),
        "e": ("short", False),
    }
    # against an index's identifiers too, numbered when the tagged one is taken as well
    assert _fit({"n": corpus["a"]}, 12, taken={"alpha beta gamma", "alpha beta"})["n"] == ("alpha beta [n]", True)
    taken = {"alpha beta", "alpha beta [n]", "alpha beta gamma"}
    assert _fit({"n": corpus["a"]}, 12, taken=taken)["n"] == ("alpha [n 2]", True)


def test_a_doc_id_too_long_for_the_budget_falls_back_to_a_short_tag():
    corpus = {f"very-long-id-{i}": {"title": "same long title words", "text": str(i)} for i in range(2)}
    fitted = _fit(corpus, 8)
    assert sorted(fitted.values()) == [("same [#1]", True), ("same [#2]", True)]
    with pytest.raises(NpdecodeError, match="raise max_length"):
        _fit(corpus, 2)


LONG_TITLES = st.dictionaries(  # titles long enough to be cut at budgets of 7-20 characters
    st.text("xyz0123", min_size=1, max_size=3),
    st.fixed_dictionaries({"title": st.text("ab ", max_size=30), "text": st.text("ab ", max_size=8)}),
    min_size=1,
    max_size=10,
)


@settings(max_examples=60, deadline=None)
@given(LONG_TITLES, st.integers(7, 20))
def test_fitted_identifiers_fit_and_stay_unique(corpus, budget):
    fitted = _fit(corpus, budget, taken={"a", "b a"})
    names = {name for name, _ in fitted.values()}
    assert all(0 < len(_chars(n)) <= budget for n in names)
    groups = {frozenset(d for d in fitted if fitted[d][0] == n) for n in names}
    assert len(names) == len(groups) and not names & {"a", "b a"}
    before = _ids(assign_identifiers(corpus, taken={"a", "b a"}))
    assert {d: len(_chars(before[d])) > budget for d in before} == {d: cut for d, (_, cut) in fitted.items()}


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
