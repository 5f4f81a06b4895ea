"""The HTTP routes of ``npdecode serve`` (docs/serve.md): an ASGI app built by :func:`create_app`.

FastAPI over Starlette, served by uvicorn: both are well kept and widely deployed, FastAPI
derives the OpenAPI schema (``/openapi.json``, ``/docs``) and the 422 answers from pydantic
models (a dependency already), and uvicorn's graceful shutdown on SIGTERM (stop accepting,
finish in-flight requests, then the app's shutdown, where the batcher drains) is what a
process manager expects.

The model loads on the decoder's thread after the server starts: ``/health`` answers 503 until then.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Literal

from fastapi import FastAPI, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from npdecode import __version__
from npdecode.errors import NpdecodeError
from npdecode.serve.batcher import Batcher, Closed, QueueFull, in_new_thread
from npdecode.serve.engine import Engine, append_and_load, load_engine, release_memory
from npdecode.serve.metrics import CONTENT_TYPE, Metrics
from npdecode.serve.settings import ServeSettings

log = logging.getLogger(__name__)
RETRY_AFTER_S = 1  # what a 503 tells a client to wait: about one decoder call under load


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SearchRequest(_Body):
    query: str | None = Field(None, description="One query (or give `queries`).")
    queries: list[str] | None = Field(None, min_length=1, description="Several queries, answered in order.")
    k: int = Field(10, ge=1, description="Documents per query.")
    fields: list[Literal["title", "text"]] = Field(["title"], description="Document fields returned with each hit.")

    @model_validator(mode="after")
    def _one_of(self) -> SearchRequest:
        if (self.query is None) == (self.queries is None):
            raise ValueError("give either 'query' or 'queries'")
        return self

    @property
    def texts(self) -> list[str]:
        return [self.query] if self.query is not None else list(self.queries or [])


class Hit(BaseModel):
    doc_id: str
    score: float
    title: str | None = None
    text: str | None = None


class QueryResult(BaseModel):
    query: str
    hits: list[Hit]


class SearchResponse(BaseModel):
    results: list[QueryResult]
    generation: int = Field(description="The index generation that answered (it grows with every append).")


class DocumentIn(_Body):
    id: str = Field(min_length=1)
    title: str = ""
    text: str = ""


class AddDocumentsRequest(_Body):
    documents: list[DocumentIn] = Field(min_length=1)
    replace: bool = Field(False, description="Replace documents whose id is indexed (else such a request is refused).")


class AddDocumentsResponse(BaseModel):
    added: int
    documents: int
    generation: int


class ServerState:
    """What the routes share: the engine (None while loading), its lock, the batcher, the metrics."""

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self.engine: Engine | None = None
        self.load_error: str | None = None
        self.lock = threading.Lock()  # guards the engine reference: a swap is one assignment under it
        self.append_lock: asyncio.Lock | None = None
        self.batcher: Batcher | None = None
        self.metrics = Metrics()

    def current(self) -> Engine:
        with self.lock:
            if self.engine is None:
                raise HTTPException(503, "the index is still loading", headers={"Retry-After": str(RETRY_AFTER_S)})
            return self.engine

    def decode(self, queries: list[str], k: int) -> list[tuple[Engine, list]]:
        """Runs in the batcher's thread: one engine for the whole batch, read once."""
        engine = self.current()
        start = time.perf_counter()
        answers = engine.search(queries, k)
        self.metrics.decoded(time.perf_counter() - start)
        return [(engine, hits) for hits in answers]


def create_app(
    settings: ServeSettings,
    *,
    loader: Callable[[ServeSettings], Engine] = load_engine,
    on_load_error: Callable[[str], None] = lambda message: None,
) -> FastAPI:
    """The server's ASGI app. ``loader`` builds the engine (on the decoder's thread, at startup);
    ``on_load_error`` hears a load that failed (the CLI stops the server)."""
    state = ServerState(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        state.append_lock = asyncio.Lock()
        state.batcher = Batcher(
            state.decode,
            max_batch=settings.max_batch,
            max_wait_ms=settings.max_wait_ms,
            max_queue=settings.max_queue,
            on_batch=state.metrics.batch,
            delay_ms=settings.debug_batch_delay_ms,
        )
        state.batcher.start()
        loading = asyncio.create_task(_load(state, loader, on_load_error))
        yield
        loading.cancel()
        await state.batcher.close()

    app = FastAPI(title="npdecode serve", version=__version__, lifespan=lifespan)
    app.state.server = state
    app.add_middleware(_Guard, state=state)
    state.metrics.gauges["npdecode_queue_depth"] = (
        "Search requests waiting for the decoder.",
        lambda: state.batcher.depth if state.batcher else 0,
    )
    state.metrics.gauges["npdecode_documents"] = (
        "Documents in the served index.",
        lambda: len(state.engine.documents) if state.engine else 0,
    )
    app.add_exception_handler(RequestValidationError, _invalid)
    _routes(app, state)
    return app


async def _load(state: ServerState, loader, on_load_error) -> None:
    try:
        engine = await state.batcher.on_decoder_thread(loader, state.settings)
    except Exception as err:  # NpdecodeError: one line; anything else too, with the log's traceback
        if not isinstance(err, NpdecodeError):
            log.exception("loading %s failed", state.settings.index_dir)
        state.load_error = str(err) or type(err).__name__
        on_load_error(state.load_error)
        return
    with state.lock:
        state.engine = engine


def _routes(app: FastAPI, state: ServerState) -> None:
    settings = state.settings

    @app.post("/search", response_model=SearchResponse, response_model_exclude_none=True)
    async def search(body: SearchRequest) -> SearchResponse:
        """Ranked documents per query; concurrent requests are decoded together."""
        if body.k > settings.max_k:
            raise HTTPException(422, f"k: at most {settings.max_k}")
        state.current()
        try:
            answers = await asyncio.wait_for(state.batcher.submit(body.texts, body.k), settings.timeout_s)
        except QueueFull:
            raise HTTPException(503, "queue full; retry later", headers={"Retry-After": str(RETRY_AFTER_S)}) from None
        except Closed:
            raise HTTPException(503, "shutting down", headers={"Retry-After": str(RETRY_AFTER_S)}) from None
        except TimeoutError:
            raise HTTPException(504, f"no answer within {settings.timeout_s:g} s") from None
        fields = set(body.fields)
        results = [QueryResult(query=q, hits=_hits(e, hits, fields)) for q, (e, hits) in zip(body.texts, answers)]
        return SearchResponse(results=results, generation=answers[0][0].generation)

    @app.get("/health")
    async def health() -> JSONResponse:
        """200 once the index is loaded and searchable, 503 before (or when loading failed)."""
        if state.load_error is not None:
            return JSONResponse({"status": "failed", "detail": state.load_error}, status_code=503)
        engine = state.engine
        if engine is None:
            return JSONResponse({"status": "loading"}, status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})
        return JSONResponse(
            {
                "status": "ok",
                "retriever": settings.retriever,
                "documents": len(engine.documents),
                "generation": engine.generation,
                "queue_depth": state.batcher.depth,
            }
        )

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> PlainTextResponse:
        """Prometheus text: requests, batch sizes, queue depth, latency."""
        return PlainTextResponse(state.metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/documents/{doc_id:path}")
    async def document(doc_id: str) -> dict[str, Any]:
        """One indexed document (404 for an id the index does not hold)."""
        engine = state.current()
        if doc_id not in engine.documents:
            if doc_id in engine.index.live_doc_set():
                return {"id": doc_id, "title": None, "text": None}  # indexed; its corpus file is gone
            raise HTTPException(404, f"no document {doc_id!r} in the index")
        return {"id": doc_id, **engine.documents[doc_id]}

    @app.post("/documents", response_model=AddDocumentsResponse)
    async def add_documents(body: AddDocumentsRequest, authorization: str | None = Header(None)):
        """Append documents as ``npdecode index --append`` does, then swap the new index in
        (bearer token of --admin-token-file). Searches keep being answered throughout."""
        _authorize(settings.admin_token, authorization)
        docs = {d.id: {"title": d.title, "text": d.text} for d in body.documents}
        if len(docs) < len(body.documents):
            raise HTTPException(422, "documents: the same id twice")
        async with state.append_lock:  # one append at a time: each builds on the index the last one left
            current = state.current()
            try:
                fresh = await in_new_thread(append_and_load, settings, current, docs, body.replace)
            except NpdecodeError as err:
                raise HTTPException(409, str(err)) from None
            with state.lock:
                state.engine = fresh
            del current
            await in_new_thread(release_memory)  # a batch still on the old engine frees it when done
        state.metrics.append()
        return AddDocumentsResponse(added=len(docs), documents=len(fresh.documents), generation=fresh.generation)


def _hits(engine: Engine, hits: list, fields: set[str]) -> list[Hit]:
    out = []
    for doc_id, score in hits:
        doc = engine.documents.get(doc_id, {})
        out.append(
            Hit(
                doc_id=doc_id,
                score=score,
                title=doc.get("title") if "title" in fields else None,
                text=doc.get("text") if "text" in fields else None,
            )
        )
    return out


def _authorize(token: str | None, header: str | None) -> None:
    if token is None:
        raise HTTPException(403, "adding documents is disabled: start the server with --admin-token-file")
    if header is None or not header.startswith("Bearer "):
        raise HTTPException(401, "adding documents needs 'Authorization: Bearer TOKEN'", {"WWW-Authenticate": "Bearer"})
    if not hmac.compare_digest(header[len("Bearer ") :].strip().encode(), token.encode()):
        raise HTTPException(403, "wrong token")


async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 with one readable line per problem (``field: message``)."""
    problems = []
    json_body = "json" in request.headers.get("content-type", "json")
    for err in exc.errors():
        loc = tuple(err.get("loc", ()))
        if err.get("type") == "json_invalid":
            problems.append(f"invalid JSON at character {loc[-1]}: {err.get('ctx', {}).get('error', err.get('msg'))}")
        elif loc == ("body",) and not json_body:
            problems.append("send a JSON object with 'Content-Type: application/json'")
        else:
            where = ".".join(str(p) for p in loc if p != "body")
            problems.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
    return JSONResponse({"detail": "; ".join(problems)}, status_code=422)


class _Guard:
    """Pure ASGI middleware: refuses bodies over the limit (413) and counts every request."""

    def __init__(self, app, state: ServerState) -> None:
        self.app, self.state = app, state
        self.limit = state.settings.max_body_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [500]

        async def sending(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            body = await self._read(scope, receive)
            if body is None:
                await _send_json(sending, 413, {"detail": f"request body over {self.limit} bytes"})
                return
            await self.app(scope, _replay(body, receive), sending)
        finally:
            route = scope.get("route")
            self.state.metrics.request(getattr(route, "path", "other"), status[0], time.perf_counter() - start)

    async def _read(self, scope, receive) -> bytes | None:
        """The whole body, or None when it is over the limit (read no further than that)."""
        length = dict(scope.get("headers", ())).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return None
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                return None
            more = message.get("more_body", False)
        return b"".join(chunks)


def _replay(body: bytes, receive):
    """An ASGI ``receive`` that gives the body read already, then the connection's own messages."""
    sent = False

    async def replaying():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # http.disconnect

    return replaying


async def _send_json(send, status: int, payload: dict) -> None:
    data = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": data})
