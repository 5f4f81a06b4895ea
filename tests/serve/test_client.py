"""npdecode.client.Client against a small standard-library HTTP/1.1 server: kept connections,
reconnecting after the server closed one, error answers, no keep-alive on request."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from npdecode.client import Client, ServerError


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive unless the client asks to close

    def setup(self) -> None:
        super().setup()
        with self.server.lock:
            self.server.connections += 1

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if body.get("query") == "full":
            self._answer(503, {"detail": "queue full"}, {"Retry-After": "2"})
        elif self.server.drop_next:  # answer, then close the connection as an idle timeout would
            self.server.drop_next = False
            self._answer(200, {"results": [{"hits": [{"doc_id": body["query"], "score": 0.0, "title": ""}]}]})
            self.close_connection = True
        else:
            self._answer(200, {"results": [{"hits": [{"doc_id": body["query"], "score": 0.0, "title": ""}]}]})

    def _answer(self, status: int, obj: dict, headers: dict | None = None) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.lock, srv.connections, srv.drop_next = threading.Lock(), 0, False
    srv.daemon_threads = True
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _url(srv) -> str:
    return f"http://127.0.0.1:{srv.server_address[1]}"


def test_one_thread_reuses_one_connection(server):
    client = Client(_url(server))
    assert [client.search(f"q{i}")[0]["doc_id"] for i in range(20)] == [f"q{i}" for i in range(20)]
    assert server.connections == 1


def test_each_thread_has_its_own_connection(server):
    client, got = Client(_url(server)), []

    def work(t: int) -> None:
        got.extend(client.search(f"t{t}-{i}")[0]["doc_id"] for i in range(10))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == sorted(f"t{t}-{i}" for t in range(4) for i in range(10))
    assert server.connections == 4


def test_a_connection_closed_by_the_server_is_opened_again(server):
    client = Client(_url(server))
    server.drop_next = True
    assert client.search("a")[0]["doc_id"] == "a"  # the server closes after this answer
    assert client.search("b")[0]["doc_id"] == "b"
    assert server.connections == 2


def test_without_keep_alive_every_call_opens_a_connection(server):
    client = Client(_url(server), keep_alive=False)
    for i in range(5):
        assert client.search(f"q{i}")[0]["doc_id"] == f"q{i}"
    assert server.connections == 5


def test_an_error_answer_raises_with_status_message_and_retry_after_and_the_connection_stays(server):
    client = Client(_url(server))
    with pytest.raises(ServerError) as err:
        client.search("full")
    assert (err.value.status, err.value.message, err.value.retry_after) == (503, "queue full", 2.0)
    assert client.search("after")[0]["doc_id"] == "after"
    assert server.connections == 1


def test_a_refused_connection_raises_oserror():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    port = srv.server_address[1]
    srv.server_close()
    with pytest.raises(OSError):
        Client(f"http://127.0.0.1:{port}", timeout=2).health()


def test_a_url_that_is_not_http_is_refused():
    with pytest.raises(ValueError, match="not an http"):
        Client("127.0.0.1:8000")
