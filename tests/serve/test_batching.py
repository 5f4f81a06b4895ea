"""The app and its batcher in this process (uvicorn in a thread) over a fake retriever: how
requests are grouped into decoder calls, timeouts, loading, failures. No model needed."""

from __future__ import annotations

import itertools
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest

from npdecode.client import Client, ServerError
from npdecode.errors import NpdecodeError
from npdecode.serve.app import create_app
from npdecode.serve.cli import _bind
from npdecode.serve.engine import Engine
from npdecode.serve.settings import ServeSettings


class FakeRetriever:
    """Answers ``k`` documents named after the query; "slow ..." queries take a second, "boom" fails."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay, self.calls = delay, []

    def search(self, queries, k):
        self.calls.append((list(queries.values()), k))
        time.sleep(self.delay + any(q.startswith("slow") for q in queries.values()))
        if "boom" in queries.values():
            raise RuntimeError("the decoder broke")
        return {qid: {f"{q}#{j}": -float(j) for j in range(k)} for qid, q in queries.items()}


def fake_engine(retriever) -> Engine:
    index = SimpleNamespace(manifest=SimpleNamespace(generation=0), live_doc_set=set)
    return Engine(retriever, index, {})


class ThreadServer:
    """``create_app`` served by uvicorn in a daemon thread on a free loopback port."""

    def __init__(self, loader, **settings) -> None:
        import uvicorn

        self.errors: list[str] = []
        app = create_app(ServeSettings(index_dir="unused", **settings), loader=loader, on_load_error=self.errors.append)
        self.sock = _bind("127.0.0.1", 0)
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        self.client = Client(f"http://127.0.0.1:{self.sock.getsockname()[1]}", timeout=10)
        while not self.server.started:
            time.sleep(0.01)

    def wait_loaded(self) -> None:
        for _ in range(500):
            try:
                self.client.health()
                return
            except ServerError:
                time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


@pytest.fixture
def serve():
    servers = []

    def start(retriever=None, loader=None, **settings):
        loader = loader or (lambda s: fake_engine(retriever))
        servers.append(ThreadServer(loader, **settings))
        servers[-1].wait_loaded()
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def test_concurrent_requests_share_one_decoder_call(serve):
    fake = FakeRetriever(delay=0.3)
    server = serve(fake, max_batch=8, max_wait_ms=200)
    queries = [f"q{i}" for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda q: server.client.search(q, k=2), queries))
    assert [[h["doc_id"] for h in hits] for hits in answers] == [[f"{q}#0", f"{q}#1"] for q in queries]
    assert sum(len(call) for call, _ in fake.calls) == 8 and len(fake.calls) <= 2  # 8 requests, 1-2 calls


def test_batches_hold_at_most_max_batch_queries_and_one_k(serve):
    fake = FakeRetriever(delay=0.05)
    server = serve(fake, max_batch=4, max_wait_ms=100)
    requests = [([f"a{i}", f"b{i}"], 3 if i == 9 else 2) for i in range(10)]
    with ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(lambda r: server.client.search(r[0], k=r[1]), requests))
    for (queries, k), hits in zip(requests, answers):
        assert [[h["doc_id"] for h in q] for q in hits] == [[f"{q}#{j}" for j in range(k)] for q in queries]
    assert all(len(call) <= 4 for call, _ in fake.calls) and sum(len(call) for call, _ in fake.calls) == 20
    assert len(fake.calls) < 10  # requests were grouped
    assert ["a9", "b9"] in [call for call, k in fake.calls if k == 3]  # a request of another k: its own call


def test_timeout_answers_504_and_the_server_goes_on(serve):
    server = serve(FakeRetriever(), timeout_s=0.3)
    with pytest.raises(ServerError) as err:
        server.client.search("slow query", k=1)
    assert err.value.status == 504
    time.sleep(0.8)  # a decoder call already running is not interrupted: let it finish
    assert server.client.search("fast", k=1)[0]["doc_id"] == "fast#0"


def test_a_failing_batch_is_500_and_the_server_goes_on(serve):
    server = serve(FakeRetriever())
    with pytest.raises(ServerError) as err:
        server.client.search("boom", k=1)
    assert err.value.status == 500
    assert server.client.search("fine", k=1)[0]["doc_id"] == "fine#0"


def test_health_is_503_until_loaded(serve):
    release = threading.Event()

    def loader(settings):
        release.wait(10)
        return fake_engine(FakeRetriever())

    server = ThreadServer(loader)
    try:
        for call in (server.client.health, lambda: server.client.search("x")):
            with pytest.raises(ServerError) as err:
                call()
            assert err.value.status == 503 and err.value.retry_after == 1
        release.set()
        server.wait_loaded()
        assert server.client.health()["status"] == "ok"
    finally:
        server.stop()


def test_a_failed_load_is_reported(serve):
    def loader(settings):
        raise NpdecodeError("idx: trie file not found")

    server = ThreadServer(loader)
    try:
        time.sleep(0.2)
        with pytest.raises(ServerError) as err:
            server.client.health()
        assert err.value.status == 503 and "trie file not found" in err.value.message
        assert server.errors == ["idx: trie file not found"]
    finally:
        server.stop()


def test_documents_route_is_disabled_without_a_token_file(serve):
    server = serve(FakeRetriever())
    with pytest.raises(ServerError) as err:
        server.client.add_documents({"x": {"title": "X", "text": ""}}, "any-token-0123456789")
    assert err.value.status == 403 and "--admin-token-file" in err.value.message


def _run_batcher(script, *, max_batch=8, max_wait_ms=300.0):
    """Run ``script(batcher, loop)`` against a Batcher whose decoder records each batch."""
    import asyncio

    from npdecode.serve.batcher import Batcher

    batches = []

    def decode(queries, k):
        batches.append((time.perf_counter(), list(queries)))
        return [[q] for q in queries]

    async def main():
        batcher = Batcher(decode, max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=64)
        batcher.start()
        try:
            await script(batcher)
        finally:
            await batcher.close()

    asyncio.run(main())
    return batches


def test_a_lone_client_waits_only_before_its_first_batch():
    """Margins of seconds, so a busy machine cannot flip it: the wait is 2 s or none."""
    times = []

    async def script(batcher):
        for i in range(4):
            t0 = time.perf_counter()
            assert await batcher.submit([f"q{i}"], 1) == [[f"q{i}"]]
            times.append(time.perf_counter() - t0)

    batches = _run_batcher(script, max_wait_ms=2000)
    assert [b for _, b in batches] == [["q0"], ["q1"], ["q2"], ["q3"]]
    assert times[0] >= 1.99  # nothing known yet: the whole wait
    assert max(times[1:]) < 1.0  # its last batch held one query: no wait


def test_clients_returning_late_fill_the_batch_instead_of_splitting_it():
    """Four closed-loop clients answered together come back 0-30 ms apart: every later batch
    waits for all four (as large as the largest recent batch), long before max_wait."""
    import asyncio

    async def client(batcher, c):
        for r in range(3):
            await asyncio.sleep(0.01 * c if r else 0)  # client c returns c x 10 ms late
            await batcher.submit([f"c{c}r{r}"], 1)

    async def script(batcher):
        await asyncio.gather(*(client(batcher, c) for c in range(4)))

    batches = _run_batcher(script, max_batch=8, max_wait_ms=5000)  # room for 8: only history says 4
    assert [len(b) for _, b in batches] == [4, 4, 4]
    gaps = [b - a for (a, _), (b, _) in itertools.pairwise(batches)]
    assert max(gaps) < 2.5  # filled by the last client (40 ms), not by the 5 s deadline


class ThreadRecorder(FakeRetriever):
    """A fake retriever that notes the thread of every decoder call."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: list[threading.Thread] = []

    def search(self, queries, k):
        self.threads.append(threading.current_thread())
        return super().search(queries, k)


def test_the_engine_loads_on_the_decoders_thread_and_appends_run_in_threads_that_end(serve, monkeypatch):
    # torch work in a second long-lived thread slows every later decoding step (batcher.py)
    import npdecode.serve.app as app_module

    fake, loaded_on, appended_on = ThreadRecorder(), [], []

    def loader(settings):
        loaded_on.append(threading.current_thread())
        return fake_engine(fake)

    def append_and_load(settings, current, docs, replace):
        appended_on.append(threading.current_thread())
        return fake_engine(fake)

    monkeypatch.setattr(app_module, "append_and_load", append_and_load)
    server = serve(loader=loader, admin_token="t" * 16)
    server.client.search("q", k=1)
    server.client.add_documents({"d": {"title": "", "text": "x"}}, "t" * 16)
    server.client.search("q", k=1)
    assert len(loaded_on) == 1 and fake.threads == [loaded_on[0]] * 2
    assert loaded_on[0].name.startswith("npdecode-decode")
    (append_thread,) = appended_on
    append_thread.join(5)
    assert append_thread is not loaded_on[0] and not append_thread.is_alive()


def test_in_new_thread_returns_the_result_or_raises_the_error():
    import asyncio

    from npdecode.serve.batcher import in_new_thread

    def fail():
        raise NpdecodeError("no room")

    async def main():
        here = threading.current_thread()
        there = await in_new_thread(threading.current_thread)
        with pytest.raises(NpdecodeError, match="no room"):
            await in_new_thread(fail)
        return here, there, await in_new_thread(lambda a, b: a + b, 2, 3)

    here, there, total = asyncio.run(main())
    there.join(5)
    assert there is not here and not there.is_alive() and total == 5


def test_accepted_connections_send_without_nagle_delay():
    # a listening socket made with proto 0 gives accepted sockets asyncio leaves Nagle on: each
    # answer on a kept-alive connection then waited ~40 ms for the client's delayed ACK
    import asyncio
    import socket

    async def main():
        sock = _bind("127.0.0.1", 0)
        seen = asyncio.get_running_loop().create_future()

        async def accepted(reader, writer):
            seen.set_result(writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(accepted, sock=sock)
        async with server:
            _, writer = await asyncio.open_connection(*sock.getsockname())
            nodelay = await asyncio.wait_for(seen, 5)
            writer.close()
        return nodelay

    assert asyncio.run(main()) != 0
