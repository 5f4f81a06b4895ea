"""Backpressure and shutdown of a real server process, and startup errors as one line."""

from __future__ import annotations

import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from npdecode.cli import main
from npdecode.client import ServerError
from npdecode.serve.cli import _bind
from tests.serve.helpers import ServerProcess


@pytest.fixture(scope="module")
def slow_server(index_dir, tmp_path_factory):
    """Every batch waits 700 ms; one query per batch, two requests may wait."""
    log = tmp_path_factory.mktemp("log") / "server.log"
    args = ["--debug-batch-delay-ms", "700", "--max-batch", "1", "--max-queue", "2", "--device", "cpu"]
    with ServerProcess(index_dir, *args, log=log) as proc:
        proc.wait_healthy()
        yield proc


def _search(client, q):
    try:
        return 200, client.search(q, k=3), None
    except ServerError as err:
        return err.status, err.message, err.retry_after


def test_full_queue_answers_503_with_retry_after(slow_server):
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda i: _search(slow_server.client, f"query {i}"), range(6)))
    statuses = [a[0] for a in answers]
    assert set(statuses) == {200, 503} and statuses.count(200) >= 2
    for status, message, retry_after in answers:
        if status == 503:
            assert message == "queue full; retry later" and retry_after == 1
        else:
            assert len(message) == 3


def test_sigterm_answers_requests_in_flight_and_exits_0(slow_server):
    answers = []
    threads = [
        threading.Thread(target=lambda i=i: answers.append(_search(slow_server.client, f"q{i}"))) for i in range(3)
    ]
    threads[0].start()
    time.sleep(0.2)  # the first is taken by the batcher (decoding) before the others come
    for t in threads[1:]:
        t.start()
    time.sleep(0.3)  # all three are in: one decoding, two queued (the queue holds two)
    assert slow_server.terminate() == 0
    for t in threads:
        t.join()
    assert [a[0] for a in answers] == [200, 200, 200]


def test_startup_mistakes_are_one_line(index_dir, tmp_path, capsys):
    empty = tmp_path / "token.txt"
    empty.write_text("\n")
    taken = _bind("127.0.0.1", 0)
    damaged = shutil.copytree(index_dir, tmp_path / "damaged")
    next(damaged.glob("trie-ce-*.npz")).unlink()
    cases = [
        (
            [str(damaged), "--port", "0", "--log-level", "warning"],
            "trie-ce-00000.npz",
        ),  # found while loading: the server stops
        ([str(tmp_path / "missing")], "not an index dir"),
        ([str(index_dir), "--admin-token-file", str(tmp_path / "nope.txt")], "--admin-token-file"),
        ([str(index_dir), "--admin-token-file", str(empty)], "at least 16 characters"),
        ([str(index_dir), "--max-batch", "0"], "max_batch"),
        ([str(index_dir), "--port", str(taken.getsockname()[1])], "cannot bind"),
    ]
    try:
        for args, message in cases:
            with pytest.raises(SystemExit) as exit_:
                main(["serve", *args])
            err = capsys.readouterr().err
            assert exit_.value.code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    finally:
        taken.close()
