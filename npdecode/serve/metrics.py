"""Prometheus text exposition (format 0.0.4) of the server's counters, written by hand.

Enough to watch a retriever in production: requests by route and status, decoder batch sizes
and decode time per batch (its sum over wall time is how busy the decoder is), queue depth, and
request latency by route. Written here (~80 lines)
rather than with ``prometheus_client``: one dependency less, and no process-global registry.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable, Sequence

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Histogram:
    """Cumulative-bucket histogram of one label set."""

    def __init__(self, buckets: Sequence[float]) -> None:
        self.buckets = tuple(buckets)
        self.counts = [0] * len(self.buckets)
        self.total, self.n = 0.0, 0

    def observe(self, value: float) -> None:
        for i, upper in enumerate(self.buckets):
            if value <= upper:
                self.counts[i] += 1
        self.total += value
        self.n += 1

    def lines(self, name: str, labels: str) -> list[str]:
        sep = "," if labels else ""
        out = [f'{name}_bucket{{{labels}{sep}le="{_num(b)}"}} {c}' for b, c in zip(self.buckets, self.counts)]
        out.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.n}')
        braces = f"{{{labels}}}" if labels else ""
        return out + [f"{name}_sum{braces} {_num(self.total)}", f"{name}_count{braces} {self.n}"]


class Metrics:
    """The server's metrics; ``render()`` is the body of ``GET /metrics``.

    ``gauges`` maps a name to ``(help, read)``: read at render time (queue depth, documents)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.latency: dict[str, Histogram] = {}
        self.batch_size = Histogram(BATCH_BUCKETS)
        self.decode_seconds = Histogram(LATENCY_BUCKETS)
        self.appends = 0
        self.gauges: dict[str, tuple[str, Callable[[], float]]] = {}

    def request(self, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(route, status)] += 1
            self.latency.setdefault(route, Histogram(LATENCY_BUCKETS)).observe(seconds)

    def batch(self, queries: int) -> None:
        with self._lock:
            self.batch_size.observe(queries)

    def decoded(self, seconds: float) -> None:
        with self._lock:
            self.decode_seconds.observe(seconds)

    def append(self) -> None:
        with self._lock:
            self.appends += 1

    def render(self) -> str:
        with self._lock:
            out = [
                "# HELP npdecode_requests_total HTTP requests answered, by route and status.",
                "# TYPE npdecode_requests_total counter",
            ]
            for (route, status), n in sorted(self.requests.items()):
                out.append(f'npdecode_requests_total{{route="{route}",status="{status}"}} {n}')
            out += [
                "# HELP npdecode_request_latency_seconds Time from request to response, by route.",
                "# TYPE npdecode_request_latency_seconds histogram",
            ]
            for route, hist in sorted(self.latency.items()):
                out += hist.lines("npdecode_request_latency_seconds", f'route="{route}"')
            out += ["# HELP npdecode_batch_size Queries per decoder call.", "# TYPE npdecode_batch_size histogram"]
            out += self.batch_size.lines("npdecode_batch_size", "")
            out += [
                "# HELP npdecode_decode_seconds Time of one decoder call (one batch), from its start to its answers.",
                "# TYPE npdecode_decode_seconds histogram",
            ]
            out += self.decode_seconds.lines("npdecode_decode_seconds", "")
            out += [
                "# HELP npdecode_appends_total Live document appends swapped in.",
                "# TYPE npdecode_appends_total counter",
                f"npdecode_appends_total {self.appends}",
            ]
        for name, (text, read) in sorted(self.gauges.items()):
            out += [f"# HELP {name} {text}", f"# TYPE {name} gauge", f"{name} {_num(read())}"]
        return "\n".join(out) + "\n"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))
