"""A real ``npdecode serve`` process over a tiny model index: answers, batching, errors, live appends."""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from npdecode.client import Client, ServerError
from npdecode.search.options import SearchOptions
from npdecode.search.retrievers.generative import GenerativeRetriever
from tests.serve.conftest import N_DOCS, TOKEN
from tests.serve.helpers import ServerProcess

QUERIES = [
    "alpha river",
    "glass storm",
    "history of the ocean",
    "queen mountain",
    "physics market",
    "comet",
    "a longer query about the silver harbor and the king",
    "zeta",
]
K = 5


@pytest.fixture(scope="module")
def server(index_dir, token_file, tmp_path_factory):
    log = tmp_path_factory.mktemp("log") / "server.log"
    args = ["--admin-token-file", str(token_file), "--max-batch", "16", "--max-wait-ms", "30"]
    with ServerProcess(index_dir, *args, "--max-body-bytes", "4096", "--device", "cpu", log=log) as proc:
        proc.wait_healthy()
        yield proc
        assert proc.terminate() == 0


def offline(index_dir, queries, k=K):
    """What ``npdecode search INDEX_DIR QUERY -k K`` returns, one query at a time."""
    retriever = GenerativeRetriever(index_dir, kind="np", options=SearchOptions.of(device="cpu"))
    return {
        q: sorted(retriever.search({"query": q}, k)["query"].items(), key=lambda kv: (-kv[1], kv[0])) for q in queries
    }


def assert_same(hits, expected):
    """Exact doc id order; scores to float noise (a batch pads queries to its longest)."""
    assert [h["doc_id"] for h in hits] == [d for d, _ in expected]
    assert [h["score"] for h in hits] == pytest.approx([s for _, s in expected], abs=1e-5)


def post_raw(url, data: bytes, content_type="application/json"):
    req = urllib.request.Request(url + "/search", data=data, method="POST", headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_health_and_openapi(server):
    health = server.client.health()
    assert health["status"] == "ok" and health["documents"] == N_DOCS and health["generation"] == 0
    schema = server.client.request("GET", "/openapi.json")
    assert {"/search", "/health", "/metrics", "/documents", "/documents/{doc_id}"} <= set(schema["paths"])


def test_batched_answers_equal_one_query_searches(server, index_dir):
    expected = offline(index_dir, QUERIES)
    with ThreadPoolExecutor(len(QUERIES)) as pool:  # one query per request, arriving together
        answers = list(pool.map(lambda q: server.client.search(q, k=K), QUERIES))
    for q, hits in zip(QUERIES, answers):
        assert_same(hits, expected[q])
    for q, hits in zip(QUERIES, server.client.search(QUERIES, k=K)):  # one request, one batch
        assert_same(hits, expected[q])
    count, total = _batch_sizes(server.client.metrics())
    assert total / count > 1  # requests were decoded together


def test_64_concurrent_requests_all_answered(server, index_dir):
    expected = offline(index_dir, QUERIES)
    queries = QUERIES * 8
    with ThreadPoolExecutor(64) as pool:
        answers = list(pool.map(lambda q: server.client.search(q, k=K, fields=["title", "text"]), queries))
    assert len(answers) == 64
    for q, hits in zip(queries, answers):
        assert_same(hits, expected[q])
        assert all(h["title"] and h["text"] for h in hits)


def test_error_codes(server):
    url = server.url
    status, body = post_raw(url, b'{"query": "alpha", ')
    assert status == 422 and "JSON" in body["detail"]
    status, body = post_raw(url, json.dumps({"query": "a", "queries": ["b"]}).encode())
    assert status == 422 and "either 'query' or 'queries'" in body["detail"]
    status, body = post_raw(url, json.dumps({"query": "a", "fields": ["body"], "k": 0}).encode())
    assert status == 422 and "fields" in body["detail"] and "k:" in body["detail"]
    status, body = post_raw(url, b"query=alpha", content_type="application/x-www-form-urlencoded")
    assert status == 422 and "application/json" in body["detail"]
    status, body = post_raw(url, json.dumps({"query": "x" * 5000}).encode())
    assert status == 413 and "4096" in body["detail"]
    with pytest.raises(ServerError) as err:
        server.client.document("no-such-doc")
    assert err.value.status == 404
    doc = server.client.document("d3")
    assert doc["id"] == "d3" and doc["title"] and doc["text"]


def test_admin_route_refused_without_the_token(server):
    docs = {"evil": {"title": "Evil", "text": "not added"}}
    for token, status in ((None, 401), ("wrong-token-0123456789", 403)):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        with pytest.raises(ServerError) as err:
            server.client.request("POST", "/documents", {"documents": [{"id": "evil"}]}, headers=headers)
        assert err.value.status == status
    with pytest.raises(ServerError) as err:
        server.client.add_documents(docs, "wrong-token-0123456789")
    assert err.value.status == 403
    with pytest.raises(ServerError) as err:  # the right token, an id already indexed, no replace
        server.client.add_documents({"d3": {"title": "Again", "text": "again"}}, TOKEN)
    assert err.value.status == 409 and "d3" in err.value.message
    assert server.client.health()["generation"] == 0 and server.client.health()["documents"] == N_DOCS


def test_metrics_text(server):
    text = server.client.metrics()
    assert re.search(r'^npdecode_requests_total\{route="/search",status="200"\} [1-9]\d*$', text, re.MULTILINE)
    assert re.search(r'^npdecode_requests_total\{route="/search",status="422"\} [1-9]', text, re.MULTILINE)
    assert re.search(r'^npdecode_requests_total\{route="/documents",status="401"\} 1$', text, re.MULTILINE)
    assert re.search(
        r'^npdecode_request_latency_seconds_bucket\{route="/search",le="\+Inf"\} [1-9]', text, re.MULTILINE
    )
    assert re.search(r"^npdecode_queue_depth 0$", text, re.MULTILINE)
    assert f"npdecode_documents {N_DOCS}" in text
    assert "# TYPE npdecode_batch_size histogram" in text
    # one decode-time observation per decoder call, and a positive total
    decodes = int(re.search(r"^npdecode_decode_seconds_count (\d+)$", text, re.MULTILINE).group(1))
    assert decodes == _batch_sizes(text)[0] >= 1
    assert float(re.search(r"^npdecode_decode_seconds_sum (\S+)$", text, re.MULTILINE).group(1)) > 0


def test_append_during_a_stream_of_searches(server, index_dir):
    """Searches before the swap see the old index, after it the new one, none fails."""
    before = offline(index_dir, QUERIES[:3])
    seen, failures, stop = [], [], threading.Event()

    def stream(client: Client) -> None:
        i = 0
        while not stop.is_set():
            q = QUERIES[i % 3]
            try:
                res = client.request("POST", "/search", {"query": q, "k": K})
                seen.append((res["generation"], q, res["results"][0]["hits"]))
            except Exception as err:  # noqa: BLE001 - any failure fails the test below
                failures.append(repr(err))
            i += 1

    threads = [threading.Thread(target=stream, args=(Client(server.url),)) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    new = {"new1": {"title": "Zebra Quantum", "text": "zebra quantum lattice"}, "new2": {"title": "Orbit", "text": ""}}
    added = server.client.add_documents(new, TOKEN)
    n_after = len(seen)
    while len(seen) < n_after + 10 and not failures:
        time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join()
    assert not failures
    assert added == {"added": 2, "documents": N_DOCS + 2, "generation": 1}
    generations = [g for g, _, _ in seen]
    assert 0 in generations and 1 in generations
    after = offline(index_dir, QUERIES[:3])
    for generation, q, hits in seen:
        assert_same(hits, (before if generation == 0 else after)[q])
    assert server.client.document("new1")["title"] == "Zebra Quantum"
    every = [h["doc_id"] for h in server.client.search("zebra quantum", k=N_DOCS + 2)]
    assert {"new1", "new2"} <= set(every) and len(every) == N_DOCS + 2
    health = server.client.health()
    assert health["generation"] == 1 and health["documents"] == N_DOCS + 2
    # the index on disk is as `npdecode index --append` leaves it
    from npdecode.index.layout import load_index
    from npdecode.index.verify import verify_artifact

    index = load_index(index_dir)
    assert len(index.manifest.segments) == 2 and index.manifest.corpus[-1].path.endswith("posted/00001.jsonl")
    assert verify_artifact(index_dir).clean


def _batch_sizes(text: str) -> tuple[int, float]:
    count = int(re.search(r"^npdecode_batch_size_count (\d+)$", text, re.MULTILINE).group(1))
    total = float(re.search(r"^npdecode_batch_size_sum (\S+)$", text, re.MULTILINE).group(1))
    return count, total
