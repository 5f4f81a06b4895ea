"""A small client of ``npdecode serve`` (docs/serve.md), on the standard library only.

>>> client = Client("http://127.0.0.1:8000")
>>> client.search("vitamin D deficiency increases fracture risk", k=5)
[{'doc_id': '...', 'score': -0.61, 'title': '...'}, ...]

A non-2xx answer raises :class:`ServerError` with the status, the server's message and, for a
503, its ``Retry-After``. One ``Client`` may be shared by threads: each thread keeps its own
HTTP/1.1 connection open between calls (``keep_alive=False``: a new connection per call), so a
pipeline that sends many small requests pays the TCP handshake once, not once per query. A kept
connection that the server has closed meanwhile (idle timeout, restart) is opened again once.
"""

from __future__ import annotations

import http.client
import json
import threading
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Any


class ServerError(Exception):
    """The server answered ``status`` (not 2xx) with ``message``."""

    def __init__(self, status: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status, self.message, self.retry_after = status, message, retry_after


# a kept-alive connection that the server closed while idle fails with one of these on reuse
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, http.client.CannotSendRequest)


class Client:
    """``Client(url).search(query or queries, k=10, fields=None)``, ``.health()``,
    ``.document(id)``, ``.add_documents(docs, token)``."""

    def __init__(self, url: str, timeout: float = 60.0, *, keep_alive: bool = True) -> None:
        self.url, self.timeout, self.keep_alive = url.rstrip("/"), timeout, keep_alive
        parts = urllib.parse.urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{url!r}: not an http(s) URL (e.g. http://127.0.0.1:8000)")
        self._https, self._host, self._port = parts.scheme == "https", parts.hostname, parts.port
        self._prefix = parts.path.rstrip("/")
        self._local = threading.local()

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

    def close(self) -> None:
        """Close this thread's kept connection (the next call opens a new one)."""
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            conn.close()

    def request(
        self, method: str, path: str, body: Any = None, *, headers: Mapping[str, str] | None = None, raw: bool = False
    ) -> Any:
        """One HTTP exchange: the decoded JSON answer (or text with ``raw``), ServerError otherwise."""
        data = json.dumps(body).encode() if body is not None else None
        sent = dict(headers or {})
        if data is not None:
            sent["Content-Type"] = "application/json"
        if not self.keep_alive:
            sent["Connection"] = "close"
        status, reason, answer, text = self._exchange(method, self._prefix + path, data, sent)
        if not 200 <= status < 300:
            raise _server_error(status, reason, answer, text)
        return text if raw else json.loads(text)

    def _exchange(self, method: str, path: str, data: bytes | None, headers: dict[str, str]):
        reused = getattr(self._local, "conn", None) is not None
        try:
            return self._once(method, path, data, headers)
        except _STALE:
            self.close()
            if not reused:
                raise
            return self._once(method, path, data, headers)  # the kept connection had been closed: once more
        except BaseException:
            self.close()  # a half-read answer leaves the connection unusable
            raise

    def _once(self, method: str, path: str, data: bytes | None, headers: dict[str, str]):
        conn = getattr(self._local, "conn", None)
        if conn is None:
            kind = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            conn = kind(self._host, self._port, timeout=self.timeout)
            self._local.conn = conn
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        text = resp.read().decode("utf-8", "replace")
        if resp.will_close or not self.keep_alive:
            self.close()
        return resp.status, resp.reason, resp.headers, text


def _server_error(status: int, reason: str, headers, text: str) -> ServerError:
    try:
        detail = json.loads(text).get("detail", text)
    except (ValueError, AttributeError):
        detail = text or reason
    retry = headers.get("Retry-After")
    message = detail if isinstance(detail, str) else json.dumps(detail)
    return ServerError(status, message, float(retry) if retry else None)
