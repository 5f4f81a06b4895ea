"""The server's knobs: one frozen, strictly validated object (``npdecode serve`` flags)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from npdecode.search.options import SearchOptions


class ServeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    index_dir: Path
    retriever: Literal["np", "genre", "bm25", "dense"] = "np"
    search: SearchOptions = SearchOptions()
    # queries decoded together at most: one decoder call (the offline search batches ~320 beam
    # rows per step, 32 queries at beam 10; more only adds latency on a CPU)
    max_batch: int = Field(32, ge=1)
    # how long a batch waits at most for as many queries as the largest recent batch held
    # (batcher.py): a lone client never waits, closed-loop clients slow to return still join
    # (a fixed 10 ms window split 32 clients into batches of 21-27 and the rest)
    max_wait_ms: float = Field(50.0, ge=0)
    # requests waiting (not yet decoding) before new ones get 503 + Retry-After: bounds memory
    # and the latency a queued request can see (max_queue / max_batch decoder calls)
    max_queue: int = Field(256, ge=1)
    timeout_s: float = Field(30.0, gt=0)  # a request unanswered by then gets 504
    max_body_bytes: int = Field(1 << 20, ge=1024)  # larger bodies get 413
    max_k: int = Field(1000, ge=1)
    admin_token: str | None = Field(None, repr=False)  # POST /documents is refused (403) without one
    # test hook: the batch worker sleeps this long before each decoder call (makes queues fill)
    debug_batch_delay_ms: float = Field(0.0, ge=0)
    warmup: bool = True  # decode one query at load, so the first request does not pay for it


def read_token_file(path: Path) -> str:
    """The admin token: the file's first line, stripped; NpdecodeError when missing or empty."""
    from npdecode.errors import NpdecodeError

    try:
        token = path.read_text(encoding="utf-8").strip().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise NpdecodeError(f"--admin-token-file {path}: unreadable ({type(err).__name__})") from None
    if not token or len(token[0].strip()) < 16:
        raise NpdecodeError(f"--admin-token-file {path}: needs a token of at least 16 characters on its first line")
    return token[0].strip()
