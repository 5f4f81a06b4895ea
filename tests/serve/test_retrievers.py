"""``npdecode serve --retriever bm25|dense``: a real server process over a tiny index answers as the
offline retriever (``build_retriever``, what ``npdecode eval --retriever`` runs) does over the
index's documents, serves them, and finds a document appended live."""

from __future__ import annotations

import pytest

from npdecode.client import ServerError
from npdecode.index.builder import build_index
from npdecode.search.options import SearchOptions
from npdecode.search.registry import build_retriever
from tests.index.helpers import fast_config, write_jsonl
from tests.serve.conftest import N_DOCS, TOKEN
from tests.serve.helpers import ServerProcess
from tests.tiny_models import toy_corpus

QUERIES = ["alpha river", "glass storm", "history of the ocean", "queen mountain", "comet", "zeta"]
K = 5
NEW = {"fresh": {"title": "Xylophone Zeppelin", "text": "xylophone zeppelin quasar"}}


@pytest.fixture(scope="module", params=["bm25", "dense"])
def served(request, t5_dir, token_file, tmp_path_factory):
    """``(retriever, server, corpus)``: a server of its own index (appends change it); the baseline
    indexes and encoded corpora go to a cache of this test, not the user's."""
    root = tmp_path_factory.mktemp(f"serve-{request.param}")
    corpus = toy_corpus(N_DOCS, seed=7)
    index_dir = build_index(write_jsonl(corpus, root / "corpus.jsonl"), t5_dir, root / "index", fast_config())
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(root / "cache"))
        args = ["--retriever", request.param, "--admin-token-file", str(token_file), "--device", "cpu"]
        with ServerProcess(index_dir, *args, log=root / "server.log") as proc:
            proc.wait_healthy()
            yield request.param, proc, corpus
            assert proc.terminate() == 0


def offline(name: str, corpus: dict, path, queries: list[str], k: int) -> dict[str, list[tuple[str, float]]]:
    """The offline retriever ``name`` over ``corpus`` (written to ``path``), ranked as the server ranks."""
    retriever = build_retriever(name, write_jsonl(corpus, path), SearchOptions.of(device="cpu", cache_dir=path.parent))
    run = retriever.search({str(i): q for i, q in enumerate(queries)}, k)
    return {q: sorted(run[str(i)].items(), key=lambda kv: (-kv[1], kv[0])) for i, q in enumerate(queries)}


def assert_same(hits, expected):
    assert [h["doc_id"] for h in hits] == [d for d, _ in expected]
    assert [h["score"] for h in hits] == pytest.approx([s for _, s in expected], abs=1e-5)


def test_health_answers_and_documents(served, tmp_path):
    name, server, corpus = served
    health = server.client.health()
    assert health == {"status": "ok", "retriever": name, "documents": N_DOCS, "generation": 0, "queue_depth": 0}
    expected = offline(name, corpus, tmp_path / "corpus.jsonl", QUERIES, K)
    assert all(expected[q] for q in QUERIES)  # BM25 lists matching documents only
    for q, hits in zip(QUERIES, server.client.search(QUERIES, k=K)):  # one request, one batch
        assert_same(hits, expected[q])
    for q in QUERIES[:2]:  # and one query per request
        assert_same(server.client.search(q, k=K), expected[q])
    assert server.client.document("d3") == {"id": "d3", **corpus["d3"]}
    with pytest.raises(ServerError) as err:
        server.client.document("no-such-doc")
    assert err.value.status == 404 and "no-such-doc" in err.value.message


def test_append_is_searched_and_served(served, tmp_path):
    name, server, corpus = served
    with pytest.raises(ServerError) as err:  # an id already indexed, without replace
        server.client.add_documents({"d3": {"title": "Again", "text": "again"}}, TOKEN)
    assert err.value.status == 409 and "d3" in err.value.message
    assert server.client.add_documents(NEW, TOKEN) == {"added": 1, "documents": N_DOCS + 1, "generation": 1}
    health = server.client.health()
    assert health["generation"] == 1 and health["documents"] == N_DOCS + 1
    assert server.client.document("fresh") == {"id": "fresh", **NEW["fresh"]}
    # every document ranked: the server's corpus file lists them in another order, which may pick
    # other documents among equal scores at a cut-off
    queries, k = ["xylophone zeppelin", *QUERIES], N_DOCS + 1
    expected = offline(name, {**corpus, **NEW}, tmp_path / "grown.jsonl", queries, k)
    assert expected["xylophone zeppelin"][0][0] == "fresh"
    for q, hits in zip(queries, server.client.search(queries, k=k)):
        assert_same(hits, expected[q])
    res = server.client.request("POST", "/search", {"query": "xylophone zeppelin", "k": K})
    assert res["generation"] == 1 and res["results"][0]["hits"][0]["doc_id"] == "fresh"
