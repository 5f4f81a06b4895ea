"""Index build, resume, append (with and without clustering), replace, search, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import load_file

from npdecode.errors import NpdecodeError
from npdecode.index import extraction
from npdecode.index.appender import append_to_index
from npdecode.index.builder import build_index
from npdecode.index.layout import load_index
from npdecode.search.retrievers.generative import GenerativeRetriever
from npdecode.trie import Trie
from tests.index.helpers import fast_config, write_jsonl
from tests.tiny_models import toy_corpus

FIRST = {k: v for k, v in toy_corpus(16, seed=5).items() if int(k[1:]) < 10}
SECOND = {f"n{k[1:]}": v for k, v in toy_corpus(16, seed=5).items() if int(k[1:]) >= 10}


def _doc_rows(index):
    """doc id -> (identifier, token ids, CE vectors of its identifier tokens)."""
    out = {}
    for i, group in enumerate(index.groups):
        for doc in index.live_doc_ids(i):
            out[doc] = (group.identifier, group.tokens, index.vectors[group.ce])
    return out


def _trie_docs(index, mode):
    """The trie's paths as {frozenset(doc ids): path}, paths over (token id, rounded CE row)."""
    trie = Trie.load(index.trie_path(mode))
    tokens, offsets, values = trie.sequences()
    out = {}
    for v, lo, hi in zip(values, offsets[:-1], offsets[1:]):
        path = tokens[lo:hi]
        if mode == "ce":
            path = tuple((int(index.token_ids[r]), tuple(np.round(index.vectors[r], 4))) for r in path)
        else:
            path = tuple(int(t) for t in path)
        out[frozenset(index.live_doc_ids(int(v)))] = path
    return out


def test_appended_without_clustering_equals_scratch_build(t5_dir, tmp_path):
    config = fast_config(k=0)
    build_index(write_jsonl(FIRST, tmp_path / "a.jsonl"), t5_dir, tmp_path / "grown", config)
    append_to_index(write_jsonl(SECOND, tmp_path / "b.jsonl"), tmp_path / "grown")
    build_index(write_jsonl({**FIRST, **SECOND}, tmp_path / "u.jsonl"), t5_dir, tmp_path / "scratch", config)
    grown, scratch = load_index(tmp_path / "grown"), load_index(tmp_path / "scratch")
    assert grown.vectors.shape == scratch.vectors.shape
    a, b = _doc_rows(grown), _doc_rows(scratch)
    assert sorted(a) == sorted(b) == sorted({**FIRST, **SECOND})
    for doc in a:
        assert a[doc][:2] == b[doc][:2]
        np.testing.assert_allclose(a[doc][2], b[doc][2], rtol=1e-5, atol=1e-5)
    # same CE rows up to order: sort both tables by (token, rounded vector)
    key = lambda ix: sorted(zip(ix.token_ids.tolist(), map(tuple, np.round(ix.vectors, 4))))
    assert key(grown) == key(scratch)
    for mode in ("ce", "token"):
        assert _trie_docs(grown, mode) == _trie_docs(scratch, mode)
    for key in ("ce_rows", "documents", "identifiers", "occurrences", "trie_ce_nodes", "trie_token_nodes"):
        assert getattr(grown.manifest.counts, key) == getattr(scratch.manifest.counts, key), key
    assert len(grown.manifest.segments) == 2 and grown.manifest.generation == 1
    assert not list(tmp_path.glob("grown/*-00000*"))  # the superseded generation is gone


def test_append_with_clustering_fills_spare_capacity_then_nearest_row(t5_dir, tmp_path):
    k = 2
    build_index(write_jsonl(FIRST, tmp_path / "a.jsonl"), t5_dir, tmp_path / "idx", fast_config(k=k, raw_ce=True))
    before = load_index(tmp_path / "idx")
    seg0 = (tmp_path / "idx" / "segments" / "00000" / "ce.safetensors").read_bytes()
    append_to_index(write_jsonl(SECOND, tmp_path / "b.jsonl"), tmp_path / "idx")
    after = load_index(tmp_path / "idx")
    assert (tmp_path / "idx" / "segments" / "00000" / "ce.safetensors").read_bytes() == seg0  # not rewritten
    raw = load_file(str(tmp_path / "idx" / "segments" / "00001" / "raw.safetensors"))
    n_old = len(before.vectors)
    filled = 0
    for vector, token, row in zip(raw["vectors"], raw["tokens"], raw["rows"]):
        assert after.token_ids[row] == token
        old_rows = np.flatnonzero(before.token_ids[2:] == token) + 2
        rows_now = np.flatnonzero(after.token_ids[2:] == token) + 2
        assert len(rows_now) <= max(k, len(old_rows))  # never more than k rows, as a rebuild
        if len(old_rows) >= k:  # no spare capacity: brute force nearest existing row (float64)
            dist = ((before.vectors[old_rows].astype(np.float64) - vector) ** 2).sum(1)
            assert row == old_rows[dist.argmin()] and len(rows_now) == len(old_rows)
        else:  # the nearest of the token's rows, old and new; new rows fill it up to k
            dist = ((after.vectors[rows_now].astype(np.float64) - vector) ** 2).sum(1)
            assert row == rows_now[dist.argmin()]
            filled += int(len(old_rows) > 0 and len(rows_now) > len(old_rows))
    assert filled > 0  # the probe has known tokens with spare capacity
    new_tokens = set(raw["tokens"].tolist()) - set(before.token_ids.tolist())
    assert new_tokens <= set(after.token_ids[n_old:].tolist())


def test_append_with_room_for_every_occurrence_equals_scratch_build(t5_dir, tmp_path):
    """k above every token's count: a rebuild keeps each distinct occurrence as a row, and so
    does an append that fills spare capacity first."""
    config = fast_config(k=64)
    build_index(write_jsonl(FIRST, tmp_path / "a.jsonl"), t5_dir, tmp_path / "grown", config)
    append_to_index(write_jsonl(SECOND, tmp_path / "b.jsonl"), tmp_path / "grown")
    build_index(write_jsonl({**FIRST, **SECOND}, tmp_path / "u.jsonl"), t5_dir, tmp_path / "scratch", config)
    grown, scratch = load_index(tmp_path / "grown"), load_index(tmp_path / "scratch")
    key = lambda ix: sorted(zip(ix.token_ids.tolist(), map(tuple, np.round(ix.vectors, 4))))
    assert key(grown) == key(scratch)
    a, b = _doc_rows(grown), _doc_rows(scratch)
    for doc in a:
        assert a[doc][:2] == b[doc][:2]
        np.testing.assert_allclose(a[doc][2], b[doc][2], rtol=1e-5, atol=1e-5)


def test_append_then_search_finds_the_new_documents(t5_dir, tmp_path):
    build_index(write_jsonl(FIRST, tmp_path / "a.jsonl"), t5_dir, tmp_path / "idx", fast_config())
    append_to_index(write_jsonl(SECOND, tmp_path / "b.jsonl"), tmp_path / "idx")
    n = len(FIRST) + len(SECOND)
    for kind, mode in (("np", "ce"), ("np", "token"), ("genre", None)):
        retriever = GenerativeRetriever(tmp_path / "idx", kind=kind, beam=n, trie_mode=mode)
        run = retriever.search({"q1": "river mountain", "q2": SECOND["n12"]["title"]}, k=n)
        for docs in run.values():
            assert set(docs) == set(FIRST) | set(SECOND)  # every document, old and new, is reachable
            assert all(np.isfinite(s) for s in docs.values())
        top = retriever.search({"q": "alpha"}, k=3)["q"]
        assert len(top) == 3 and set(top) <= set(FIRST) | set(SECOND)


def test_existing_ids_refused_unless_replace(t5_dir, tmp_path):
    build_index(write_jsonl(FIRST, tmp_path / "a.jsonl"), t5_dir, tmp_path / "idx", fast_config())
    changed = {"d3": {"title": "Comet Harbor Renamed", "text": "new words about a harbor"}}
    path = write_jsonl(changed, tmp_path / "c.jsonl")
    with pytest.raises(NpdecodeError, match="'d3'.*--replace"):
        append_to_index(path, tmp_path / "idx")
    append_to_index(path, tmp_path / "idx", replace=True)
    index = load_index(tmp_path / "idx")
    owners = [index.groups[i].identifier for i in range(len(index.groups)) if "d3" in index.live_doc_ids(i)]
    assert owners == ["Comet Harbor Renamed"]
    assert index.manifest.counts.documents == len(FIRST)
    docs = _trie_docs(index, "token")
    assert frozenset({"d3"}) in docs and len(docs) == len(FIRST)  # the old path left the trie
    # an identical document joins the existing identifier
    twin = {"twin": dict(FIRST["d1"])}
    append_to_index(write_jsonl(twin, tmp_path / "t.jsonl"), tmp_path / "idx")
    index = load_index(tmp_path / "idx")
    assert any(set(index.live_doc_ids(i)) == {"d1", "twin"} for i in range(len(index.groups)))


def test_interrupted_build_resumes_without_redoing_shards(t5_dir, tmp_path, monkeypatch):
    corpus = write_jsonl(FIRST, tmp_path / "a.jsonl")  # 10 docs, shard_size 3 -> 4 shards
    config = fast_config(shard_size=3)
    real, written = extraction.write_shard, []

    def crash_after_two(path, parts):
        if len(written) == 2:
            raise RuntimeError("simulated crash")
        written.append(path.name)
        real(path, parts)

    monkeypatch.setattr(extraction, "write_shard", crash_after_two)
    with pytest.raises(RuntimeError, match="simulated crash"):
        build_index(corpus, t5_dir, tmp_path / "idx", config)
    assert not (tmp_path / "idx").exists()  # nothing that looks like an index
    assert len(list((tmp_path / ".idx.partial" / "shards").glob("shard-*"))) == 2
    resumed = []

    def count(path, parts):
        resumed.append(path.name)
        real(path, parts)

    monkeypatch.setattr(extraction, "write_shard", count)
    build_index(corpus, t5_dir, tmp_path / "idx", config)
    assert sorted(resumed) == sorted({f"shard-0000{i}.safetensors" for i in range(4)} - set(written))
    assert not (tmp_path / ".idx.partial").exists()
    monkeypatch.setattr(extraction, "write_shard", real)
    build_index(corpus, t5_dir, tmp_path / "clean", config)
    a, b = load_index(tmp_path / "idx"), load_index(tmp_path / "clean")
    np.testing.assert_array_equal(a.vectors, b.vectors)
    assert [g.ce for g in a.groups] == [g.ce for g in b.groups]


def test_user_mistakes_are_clear_and_leave_nothing(t5_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"_id": "a", "title": "A", "text": "x"}\n{"_id": "b", "title": \n')
    with pytest.raises(NpdecodeError, match=r"bad.jsonl:2: malformed JSON"):
        build_index(bad, t5_dir, tmp_path / "idx", fast_config())
    good = write_jsonl(FIRST, tmp_path / "a.jsonl")
    with pytest.raises(NpdecodeError, match="no-such-model"):
        build_index(good, tmp_path / "no-such-model", tmp_path / "idx", fast_config())
    empty = write_jsonl({"x": {"title": " ", "text": ""}, "e": {"title": "", "text": " "}}, tmp_path / "e.jsonl")
    with pytest.raises(NpdecodeError, match="e.jsonl: all 2 documents have neither title nor text"):
        build_index(empty, t5_dir, tmp_path / "idx", fast_config())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl", "bad.jsonl", "e.jsonl"]
    build_index(good, t5_dir, tmp_path / "idx", fast_config())
    with pytest.raises(NpdecodeError, match="already exists"):
        build_index(good, t5_dir, tmp_path / "idx", fast_config())
    with pytest.raises(NpdecodeError, match="not an index dir"):
        append_to_index(good, tmp_path)
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert manifest["counts"]["documents"] == len(FIRST)
    assert manifest["model"]["digest"] and manifest["corpus"][0]["digest"]
    assert manifest["versions"]["torch"] and manifest["config"]["k"] == 5


def test_a_changed_plan_starts_the_partial_work_over(t5_dir, tmp_path, monkeypatch):
    corpus = write_jsonl(FIRST, tmp_path / "a.jsonl")  # 10 docs, shard_size 3 -> 4 shards
    real = extraction.write_shard

    def run(config, crash_after=None):
        encoded = []

        def writer(path, parts):
            if crash_after is not None and len(encoded) == crash_after:
                raise RuntimeError("simulated crash")
            encoded.append(path.name)
            real(path, parts)

        monkeypatch.setattr(extraction, "write_shard", writer)
        try:
            build_index(corpus, t5_dir, tmp_path / "idx", config)
        except RuntimeError:
            pass
        return encoded

    assert len(run(fast_config(shard_size=3), crash_after=1)) == 1
    # where and how it runs is not part of the plan: another progress setting resumes
    assert len(run(fast_config(shard_size=3, progress=True), crash_after=1)) == 1
    # another k is another index: the partial shards are discarded
    assert len(run(fast_config(shard_size=3, k=2))) == 4
    assert load_index(tmp_path / "idx").manifest.config["k"] == 2


def test_an_identifier_without_tokens_is_a_clear_error():
    from npdecode.index.builder import tokenize_identifiers
    from npdecode.index.identifiers import assign_identifiers

    class Silent:  # a tokenizer that drops everything (e.g. characters it cannot represent)
        def tokenize_identifier(self, identifier):
            return [] if identifier == "\u2603" else [5]

    groups = assign_identifiers({"ok": {"title": "A", "text": ""}, "snow": {"title": "\u2603", "text": ""}})
    with pytest.raises(NpdecodeError, match="'snow'.*has no tokens"):
        tokenize_identifiers(Silent(), groups)


def test_max_length_is_cut_to_the_backbone_positions(bart_dir, tmp_path, caplog):
    """A BART with 128 positions indexed at the default max_length (512): no IndexError deep in
    torch.embedding; the manifest records the length used."""
    import json
    import logging

    from npdecode.index.config import IndexConfig

    long_text = {
        "d0": {"title": "Alpha River", "text": " ".join(["gamma star"] * 300)},
        "d1": {"title": "Iron Gold", "text": "harbor"},
    }
    corpus = write_jsonl(long_text, tmp_path / "c.jsonl")
    config = IndexConfig(progress=False, accelerator="cpu")
    assert config.max_length == 512
    with caplog.at_level(logging.WARNING):
        build_index(corpus, bart_dir, tmp_path / "idx", config)
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert manifest["config"]["max_length"] == 128
    assert sum("at most 128 input positions" in r.message for r in caplog.records) == 1


def test_segments_record_precision_and_an_append_in_another_is_refused(t5_dir, tmp_path, capsys):
    from npdecode.cli import main

    build_index(write_jsonl(FIRST, tmp_path / "a.jsonl"), t5_dir, tmp_path / "idx", fast_config())
    assert [s.precision for s in load_index(tmp_path / "idx").manifest.segments] == ["32-true"]
    second = write_jsonl(SECOND, tmp_path / "b.jsonl")
    capsys.readouterr()
    with pytest.raises(SystemExit) as err:
        main(["index", str(second), "--append", str(tmp_path / "idx"), "--precision", "bf16"])
    message = capsys.readouterr().err.strip()
    assert err.value.code == 2 and "32-true" in message and "--allow-mixed-precision" in message and "\n" not in message
    assert len(load_index(tmp_path / "idx").manifest.segments) == 1  # nothing written
    main(["index", str(second), "--append", str(tmp_path / "idx"), "--precision", "bf16", "--allow-mixed-precision"])
    index = load_index(tmp_path / "idx")
    assert [s.precision for s in index.manifest.segments] == ["32-true", "bf16-mixed"]
    assert len(index.live_doc_set()) == len(FIRST) + len(SECOND)


def test_manifest_is_typed_and_a_broken_one_is_a_one_line_error(t5_dir, tmp_path):
    from npdecode.index.manifest import IndexManifest, read_manifest

    build_index(write_jsonl(FIRST, tmp_path / "a.jsonl"), t5_dir, tmp_path / "idx", fast_config())
    manifest = read_manifest(tmp_path / "idx")
    assert isinstance(manifest, IndexManifest) and manifest.format == "npdecode-index/1"
    assert manifest.counts.documents == len(FIRST) and manifest.segments[0].name == "00000"
    data = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    del data["files"]["store"]
    data["segmnts"] = data.pop("segments")
    (tmp_path / "idx" / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(NpdecodeError, match=r"manifest.json: invalid manifest \(.*\); rebuild the index"):
        load_index(tmp_path / "idx")
