"""Real collections: empty documents are skipped (warned, recorded, unretrievable) and titles
longer than the encoder input are cut to fit, unique, and still decodable; never a failed build."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from click.testing import CliRunner

from npdecode.backbone import load_backbone
from npdecode.cli import cli, main
from npdecode.errors import NpdecodeError
from npdecode.eval.metrics import evaluate
from npdecode.index.appender import append_to_index
from npdecode.index.builder import build_index, identifier_budget
from npdecode.index.layout import load_index
from npdecode.index.manifest import read_manifest
from npdecode.search.retrievers.generative import GenerativeRetriever
from npdecode.trie import Trie
from tests.index.helpers import fast_config, write_jsonl
from tests.tiny_models import WORDS, toy_corpus

DOCS = toy_corpus(8, seed=3)
EMPTY = {"471": {"title": "", "text": "  "}, "903": {"title": " \t", "text": ""}}
LONG = " ".join(WORDS[i % len(WORDS)] for i in range(60))  # far over a 16-token budget


def _warnings(caplog, word: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and word in r.getMessage()]


def _search_all(index_dir, queries: dict[str, str]) -> dict[str, dict[str, float]]:
    """Every query's run with a beam as wide as the index: all decodable documents come out."""
    n = len(load_index(index_dir).live_doc_set())
    return GenerativeRetriever(index_dir, kind="np", beam=n, trie_mode="ce").search(queries, k=n)


def test_empty_documents_are_skipped_with_one_warning_and_recorded(t5_dir, tmp_path, caplog):
    corpus = write_jsonl({**DOCS, **EMPTY}, tmp_path / "c.jsonl")
    with caplog.at_level(logging.WARNING):
        build_index(corpus, t5_dir, tmp_path / "idx", fast_config())
    assert _warnings(caplog, "skipped") == [f"{corpus}: skipped 2 documents with neither title nor text: '471', '903'"]
    index = load_index(tmp_path / "idx")
    assert index.live_doc_set() == set(DOCS) and index.manifest.counts.documents == len(DOCS)
    raw = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert raw["segments"][0]["skipped"] == {"empty": {"count": 2, "doc_ids": ["471", "903"]}}
    assert "cut_identifiers" not in raw["segments"][0]
    run = _search_all(tmp_path / "idx", {"q": "river mountain"})
    assert set(run["q"]) == set(DOCS)  # the others are all searchable, the empty ones absent


def test_evaluating_over_an_index_without_the_empty_documents_counts_them_unretrieved(t5_dir, tmp_path):
    build_index(write_jsonl({**DOCS, **EMPTY}, tmp_path / "c.jsonl"), t5_dir, tmp_path / "idx", fast_config())
    qrels = {"q1": {"471": 1}, "q2": {"d1": 1, "903": 1}}  # the qrels keep judging the skipped ones
    run = _search_all(tmp_path / "idx", {"q1": "alpha", "q2": DOCS["d1"]["title"]})
    result = evaluate(qrels, run)
    assert result.num_queries == 2
    assert result.per_query["q1"]["recall_100"] == 0.0 and result.per_query["q1"]["success_100"] == 0.0
    assert result.per_query["q2"]["recall_100"] == 0.5  # d1 found, 903 never can be
    assert result.mean["recall_100"] == 0.25


def test_a_clean_corpus_writes_the_manifest_it_always_did(t5_dir, tmp_path):
    build_index(write_jsonl(DOCS, tmp_path / "c.jsonl"), t5_dir, tmp_path / "idx", fast_config())
    raw = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert not {"skipped", "cut_identifiers"} & set(raw["segments"][0])
    assert read_manifest(tmp_path / "idx").segments[0].skipped is None


def test_append_skips_empty_documents_per_segment(t5_dir, tmp_path, caplog):
    build_index(
        write_jsonl({**DOCS, "471": EMPTY["471"]}, tmp_path / "a.jsonl"), t5_dir, tmp_path / "idx", fast_config()
    )
    new = {"n1": {"title": "Fresh Harbor", "text": "a new river"}, "e2": {"title": "", "text": ""}}
    second = write_jsonl(new, tmp_path / "b.jsonl")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        manifest = append_to_index(second, tmp_path / "idx")
    assert _warnings(caplog, "skipped") == [f"{second}: skipped 1 document with neither title nor text: 'e2'"]
    assert manifest.segments[0].skipped.empty.doc_ids == ["471"]
    assert manifest.segments[1].skipped.empty.model_dump() == {"count": 1, "doc_ids": ["e2"]}
    assert load_index(tmp_path / "idx").live_doc_set() == set(DOCS) | {"n1"}
    # an empty new version under --replace retires the old one, as a rebuild would
    third = {"d2": EMPTY["903"], "n2": {"title": "Later Star", "text": "stars"}}
    manifest = append_to_index(write_jsonl(third, tmp_path / "r.jsonl"), tmp_path / "idx", replace=True)
    assert manifest.segments[2].removed == ["d2"] and manifest.segments[2].skipped.empty.doc_ids == ["d2"]
    live = (set(DOCS) - {"d2"}) | {"n1", "n2"}
    assert load_index(tmp_path / "idx").live_doc_set() == live
    assert set(_search_all(tmp_path / "idx", {"q": "harbor"})["q"]) == live


def test_a_corpus_of_empty_documents_only_is_a_one_line_error(t5_dir, tmp_path, capsys):
    corpus = write_jsonl(EMPTY, tmp_path / "empty.jsonl")
    out = tmp_path / "idx"
    result = CliRunner().invoke(cli, ["index", str(corpus), "--model", str(t5_dir), "--out", str(out)])
    assert result.exit_code != 0 and isinstance(result.exception, NpdecodeError)
    assert str(result.exception) == f"{corpus}: all 2 documents have neither title nor text; nothing to index"
    capsys.readouterr()
    with pytest.raises(SystemExit) as err:  # the console script: one line, no traceback
        main(["index", str(corpus), "--model", str(t5_dir), "--out", str(out)])
    stderr = capsys.readouterr().err
    assert err.value.code == 2 and stderr == f"error: {result.exception}\n"
    assert not out.exists() and not (tmp_path / ".idx.partial").exists()
    build_index(write_jsonl(DOCS, tmp_path / "c.jsonl"), t5_dir, out, fast_config())
    one = write_jsonl({"x": EMPTY["471"]}, tmp_path / "one.jsonl")
    result = CliRunner().invoke(cli, ["index", str(one), "--append", str(out)])
    assert str(result.exception) == f"{one}: its only document has neither title nor text; nothing to index"
    assert len(read_manifest(out).segments) == 1  # nothing written


@pytest.mark.parametrize("family", ["t5", "bert2bert"])
def test_titles_longer_than_max_length_are_cut_unique_and_found(family, request, tmp_path, caplog):
    model = request.getfixturevalue(f"{family}_dir")
    backbone = load_backbone(model)
    budget = identifier_budget(backbone, 16)
    assert budget == 16 - {"t5": 1, "bert2bert": 2}[family]  # the specials around the text
    corpus = {
        **DOCS,
        "long1": {"title": LONG + " alpha", "text": "first long document"},
        "long2": {"title": LONG + " omega", "text": "second long document"},  # same first 60 words
        "long3": {"title": "x" * 90, "text": "one word far over the budget"},  # cut inside the word
    }
    path = write_jsonl(corpus, tmp_path / "c.jsonl")
    with caplog.at_level(logging.WARNING):
        build_index(path, model, tmp_path / "idx", fast_config(max_length=16))
    assert _warnings(caplog, "cut") == [
        f"{path}: cut 3 identifiers to the {budget} tokens that max_length=16 leaves: 'long1', 'long2', 'long3'"
    ]
    index = load_index(tmp_path / "idx")
    assert index.manifest.segments[0].cut_identifiers.model_dump() == {
        "count": 3,
        "doc_ids": ["long1", "long2", "long3"],
    }
    names = {d: g.identifier for g in index.groups for d in g.doc_ids}
    assert len(set(names.values())) == len(corpus)
    assert names["long1"].endswith("[long1]") and names["long2"].endswith("[long2]")  # they share the prefix
    assert set(names["long3"]) == {"x"}  # a character prefix of the one word
    for group in index.groups:  # trie, targets and CE positions all come from the stored identifier
        assert group.tokens == backbone.tokenize_identifier(group.identifier)
        assert 0 < len(group.tokens) <= budget
        assert [int(t) for t in index.token_ids[group.ce]] == group.tokens
    trie = Trie.load(index.trie_path("token"))
    tokens, offsets, values = trie.sequences()
    paths = {int(v): tokens[lo:hi].tolist() for v, lo, hi in zip(values, offsets[:-1], offsets[1:])}
    for i, group in enumerate(index.groups):
        assert paths[i] == group.tokens + [index.eos_token]
    run = _search_all(tmp_path / "idx", {"q": "first long document"})
    assert {"long1", "long2", "long3"} <= set(run["q"]) and all(np.isfinite(s) for s in run["q"].values())


def test_an_appended_long_title_stays_unique_against_the_index(t5_dir, tmp_path, caplog):
    first = {**DOCS, "long1": {"title": LONG, "text": "first"}}
    build_index(write_jsonl(first, tmp_path / "a.jsonl"), t5_dir, tmp_path / "idx", fast_config(max_length=16))
    before = {g.identifier for g in load_index(tmp_path / "idx").groups}
    second = write_jsonl({"long9": {"title": LONG + " more words", "text": "later"}}, tmp_path / "b.jsonl")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        manifest = append_to_index(second, tmp_path / "idx")
    assert len(_warnings(caplog, "cut 1 identifier")) == 1
    assert manifest.segments[1].cut_identifiers.doc_ids == ["long9"]
    index = load_index(tmp_path / "idx")
    new = next(g for g in index.groups if "long9" in g.doc_ids)
    assert new.identifier not in before and new.identifier.endswith("[long9]")
    assert len(new.tokens) <= 15 and new.tokens == load_backbone(t5_dir).tokenize_identifier(new.identifier)
    run = _search_all(tmp_path / "idx", {"q": "later"})
    assert {"long1", "long9"} <= set(run["q"])
