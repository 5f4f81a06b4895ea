"""Dynamic batching: concurrent search requests decoded together, one decoder call per batch.

Requests wait in a bounded asyncio queue. A single worker takes the first one and collects
what is queued and what arrives, never splitting a request, at most ``max_batch`` queries, until
the batch holds as many queries as the largest of the last ``HISTORY`` batches (the clients
that are active come back: closed-loop clients answered together return together) or
``max_wait_ms`` has passed since the first (before any batch: the whole wait). A lone client
thus waits once (its previous batch was itself), and many clients fill a batch instead of
splitting into a large and a small one whenever some return a few milliseconds late. It runs
``decode(queries, k)`` once per distinct ``k`` in a dedicated thread, so the event loop keeps
answering while the decoder works, and hands each request its own slice of the answers.
The decoder sees one batch at a time: a second thread would only contend for the same cores.

The decoder's thread is the one thread of the server that runs torch for long: the engine loads
(and warms up) on it, and appends run in threads that end with them (:func:`in_new_thread`).
Measured on 2 cores: once a second thread that stays alive has run torch (the model loaded in
it), every decoding step is 20-30% slower. The likely mechanism: each such thread keeps its own
OpenMP pool, and once the live pools outnumber the cores libgomp stops spin-waiting between
parallel regions, so every op pays a futex wake-up.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

HISTORY = 8  # batches whose largest size is the size a batch waits for

Decode = Callable[[list[str], int], list[Any]]  # (queries, k) -> one answer per query


class QueueFull(Exception):
    """The queue holds ``max_queue`` requests already (answer 503, retry later)."""


class Closed(Exception):
    """The server is shutting down and takes no new requests."""


@dataclass
class Pending:
    queries: list[str]
    k: int
    future: asyncio.Future
    arrived: float = field(default=0.0)


class Batcher:
    """Collects requests into batches for ``decode``; start with :meth:`start`, drain with :meth:`close`."""

    def __init__(
        self,
        decode: Decode,
        *,
        max_batch: int,
        max_wait_ms: float,
        max_queue: int,
        on_batch: Callable[[int], None] = lambda n: None,
        delay_ms: float = 0.0,
    ) -> None:
        self.decode, self.max_batch, self.max_wait = decode, max_batch, max_wait_ms / 1000
        self.on_batch, self.delay = on_batch, delay_ms / 1000
        self.queue: asyncio.Queue[Pending] = asyncio.Queue(maxsize=max_queue)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="npdecode-decode")
        self._arrived = asyncio.Event()
        self._held: Pending | None = None  # taken from the queue but left for the next batch
        self._recent: deque[int] = deque(maxlen=HISTORY)  # queries in the last batches
        self._busy = False
        self._closed = False
        self._task: asyncio.Task | None = None

    @property
    def depth(self) -> int:
        """Requests waiting, not yet decoding."""
        return self.queue.qsize() + (self._held is not None)

    async def on_decoder_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` on the decoder's thread (loading the engine: its pool is the one decoding uses)."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="npdecode-batcher")

    async def submit(self, queries: list[str], k: int) -> list[Any]:
        """The answers to ``queries`` (in order), decoded with whatever else is waiting."""
        if self._closed:
            raise Closed()
        loop = asyncio.get_running_loop()
        pending = Pending(queries, k, loop.create_future(), loop.time())
        try:
            self.queue.put_nowait(pending)
        except asyncio.QueueFull:
            raise QueueFull() from None
        self._arrived.set()
        return await pending.future

    async def close(self) -> None:
        """Take no new requests, answer every queued one, then stop the worker and its thread."""
        self._closed = True
        while (self.depth or self._busy) and self._task is not None and not self._task.done():
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.executor.shutdown(wait=True)

    async def _run(self) -> None:
        while True:
            batch = await self._collect()
            self._busy = True
            try:
                await self._decode(batch)
            finally:
                self._busy = False

    async def _collect(self) -> list[Pending]:
        loop = asyncio.get_running_loop()
        first = self._held or await self.queue.get()
        self._held = None
        batch, n = [first], len(first.queries)
        deadline = loop.time() + self.max_wait
        expected = min(self.max_batch, max(self._recent, default=self.max_batch))  # none yet: wait
        while n < self.max_batch:
            self._arrived.clear()  # before draining: an arrival after the drain sets it again
            while n < self.max_batch and not self.queue.empty():
                item = self.queue.get_nowait()
                if n + len(item.queries) > self.max_batch:
                    self._held = item
                    self._recent.append(n)
                    return batch
                batch.append(item)
                n += len(item.queries)
            remaining = deadline - loop.time()
            if n >= expected or remaining <= 0:
                break
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                if self.queue.empty():
                    break
        self._recent.append(n)
        return batch

    async def _decode(self, batch: list[Pending]) -> None:
        batch = [p for p in batch if not p.future.done()]  # timed out while queued: not decoded
        if self.delay:
            await asyncio.sleep(self.delay)
        loop = asyncio.get_running_loop()
        for k in sorted({p.k for p in batch}):
            group = [p for p in batch if p.k == k]
            queries = [q for p in group for q in p.queries]
            self.on_batch(len(queries))
            try:
                answers = await loop.run_in_executor(self.executor, self.decode, queries, k)
            except Exception as err:  # the request gets a 500 naming it; the server keeps serving
                log.exception("decoding a batch of %d queries failed", len(queries))
                for p in group:
                    if not p.future.done():
                        p.future.set_exception(err)
                continue
            at = 0
            for p in group:
                if not p.future.done():
                    p.future.set_result(answers[at : at + len(p.queries)])
                at += len(p.queries)


async def in_new_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in a thread started for it that ends with it, so that the OpenMP pool its
    torch ops create goes with it (see the module's docstring). The thread is not a daemon: an
    append under way when the process exits is finished, not cut off."""
    name = f"npdecode-{getattr(fn, '__name__', 'work')}"
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
    try:
        return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)
    finally:
        executor.shutdown(wait=False)  # its thread exits once ``fn`` has returned
