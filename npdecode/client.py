"""A small client of ``npdecode serve`` (docs/serve.md), on the standard library only.

>>> client = Client("http://127.0.0.1:8000")
>>> client.search("vitamin D deficiency increases fracture risk", k=5)
[{'doc_id': '...', 'score': -0.61, 'title': '...'}, ...]

A non-2xx answer raises :class:`ServerError` with the status, the server's message and, for a
503, its ``Retry-After``. One ``Client`` may be shared by threads (each call opens its own
connection).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from typing import Any


class ServerError(Exception):
    """The server answered ``status`` (not 2xx) with ``message``."""

    def __init__(self, status: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status, self.message, self.retry_after = status, message, retry_after


class Client:
    """``Client(url).search(query or queries, k=10, fields=None)``, ``.health()``,
    ``.document(id)``, ``.add_documents(docs, token)``."""

    def __init__(self, url: str, timeout: float = 60.0) -> None:
        self.url, self.timeout = url.rstrip("/"), timeout

    def search(self, query: str | list[str], k: int = 10, fields: Iterable[str] | None = None) -> list:
        """Ranked hits ``{doc_id, score, title}`` of one query, or a list of them per query of a list."""
        body: dict[str, Any] = {"k": k, "query": query} if isinstance(query, str) else {"k": k, "queries": list(query)}
        if fields is not None:
            body["fields"] = list(fields)
        results = self.request("POST", "/search", body)["results"]
        hits = [r["hits"] for r in results]
        return hits[0] if isinstance(query, str) else hits

    def health(self) -> dict[str, Any]:
        """The server's status (``{"status": "ok", ...}``); ServerError 503 while it loads."""
        return self.request("GET", "/health")

    def document(self, doc_id: str) -> dict[str, Any]:
        """``{id, title, text}`` of an indexed document; ServerError 404 for an unknown id."""
        return self.request("GET", "/documents/" + urllib.parse.quote(doc_id, safe=""))

    def add_documents(
        self, docs: Mapping[str, Mapping[str, str]] | list[Mapping[str, str]], token: str, *, replace: bool = False
    ) -> dict[str, Any]:
        """Append documents (``{id: {title, text}}`` or ``[{id, title, text}]``) to the served index."""
        items = [{"id": i, **d} for i, d in docs.items()] if isinstance(docs, Mapping) else [dict(d) for d in docs]
        body = {"documents": items, "replace": replace}
        return self.request("POST", "/documents", body, headers={"Authorization": f"Bearer {token}"})

    def metrics(self) -> str:
        """The Prometheus text of ``GET /metrics``."""
        return self.request("GET", "/metrics", raw=True)

    def request(
        self, method: str, path: str, body: Any = None, *, headers: Mapping[str, str] | None = None, raw: bool = False
    ) -> Any:
        """One HTTP exchange: the decoded JSON answer (or text with ``raw``), ServerError otherwise."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=dict(headers or {}))
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                text = resp.read().decode("utf-8")
        except urllib.error.HTTPError as err:
            raise _server_error(err) from None
        return text if raw else json.loads(text)


def _server_error(err: urllib.error.HTTPError) -> ServerError:
    text = err.read().decode("utf-8", "replace")
    try:
        detail = json.loads(text).get("detail", text)
    except (ValueError, AttributeError):
        detail = text
    retry = err.headers.get("Retry-After")
    message = detail if isinstance(detail, str) else json.dumps(detail)
    return ServerError(err.code, message, float(retry) if retry else None)
