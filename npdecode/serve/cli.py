"""``npdecode serve``: serve an index dir over HTTP (docs/serve.md)."""

from __future__ import annotations

import logging
import signal
import socket
from pathlib import Path

import click

from npdecode.errors import NpdecodeError
from npdecode.search.cli import memory_weight_option, past_beam_option


@click.command("serve")
@click.argument("index_dir", type=click.Path(path_type=Path))
@click.option(
    "--retriever",
    type=click.Choice(["np", "genre", "bm25", "dense"]),
    default="np",
    show_default=True,
    help="np / genre decode with the index's model; bm25 / dense search the index's documents.",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (0.0.0.0: every interface).")
@click.option("--port", type=int, default=8000, show_default=True, help="Port (0: any free one, printed).")
@click.option("--max-batch", type=int, default=32, show_default=True, help="Queries decoded together at most.")
@click.option(
    "--max-wait-ms",
    type=float,
    default=50.0,
    show_default=True,
    help="How long a batch waits at most for as many queries as a recent batch held.",
)
@click.option("--max-queue", type=int, default=256, show_default=True, help="Waiting requests before 503.")
@click.option("--timeout-s", type=float, default=30.0, show_default=True, help="A request's answer deadline (504).")
@click.option("--max-body-bytes", type=int, default=1 << 20, show_default=True, help="Larger request bodies get 413.")
@click.option("--admin-token-file", type=click.Path(path_type=Path), help="File whose token POST /documents needs.")
@click.option("--device", help="auto (default), cpu or cuda[:n].")
@click.option("--beam", type=int, help="Beam size (default 10).")
@click.option("--trie-mode", type=click.Choice(["ce", "token", "group"]), help="Np decoding trie mode (see search).")
@click.option("--gr-model", help="Decode with this checkpoint instead of the one the index records.")
@click.option("--batch-size", type=int, help="Queries the decoder takes per step (default: ~320 beam rows).")
@click.option("--normalizer", help="exact (default) or ivf[:NPROBE[:TOPK[:NLIST]]] (see search).")
@click.option("--dtype", type=click.Choice(["fp32", "bf16", "auto"]), help="Decode in this precision.")
@click.option("--length-penalty", type=float, help="Finished hypotheses score sum / length**L (default 1).")
@memory_weight_option
@past_beam_option
@click.option("--verify", is_flag=True, help="Check every index and checkpoint file's digest before loading.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning"]), default="info", show_default=True)
@click.option("--debug-batch-delay-ms", type=float, default=0.0, hidden=True, help="Test hook: slow every batch.")
def serve_command(
    index_dir,
    retriever,
    host,
    port,
    max_batch,
    max_wait_ms,
    max_queue,
    timeout_s,
    max_body_bytes,
    admin_token_file,
    device,
    beam,
    trie_mode,
    gr_model,
    batch_size,
    normalizer,
    dtype,
    length_penalty,
    memory_weight,
    past_beam,
    verify,
    log_level,
    debug_batch_delay_ms,
):
    """Serve INDEX_DIR over HTTP: POST /search, GET /health, /metrics, /documents/ID, POST /documents.

    Concurrent requests are decoded together (--max-batch, --max-wait-ms); SIGTERM finishes the
    requests in flight and exits 0.

    \b
    Example:  npdecode serve runs/scifact/index --port 8000 --admin-token-file token.txt
    """
    from npdecode.config import validated
    from npdecode.index.manifest import read_manifest
    from npdecode.search.options import SearchOptions
    from npdecode.serve.settings import ServeSettings, read_token_file

    read_manifest(index_dir)  # a missing or broken index dir is one line now, not after the server started
    options = SearchOptions.of(
        beam=beam,
        trie_mode=trie_mode,
        gr_model=gr_model,
        batch_size=batch_size,
        device=device,
        normalizer=normalizer,
        length_penalty=length_penalty,
        dtype=dtype,
        memory_weight=memory_weight,
        past_beam=past_beam,
        verify=verify or None,
        progress=False,
    )
    settings = validated(
        ServeSettings,
        {
            "index_dir": index_dir,
            "retriever": retriever,
            "search": options,
            "max_batch": max_batch,
            "max_wait_ms": max_wait_ms,
            "max_queue": max_queue,
            "timeout_s": timeout_s,
            "max_body_bytes": max_body_bytes,
            "debug_batch_delay_ms": debug_batch_delay_ms,
            "admin_token": read_token_file(admin_token_file) if admin_token_file is not None else None,
        },
        "serve options",
        "serve options",
    )
    run_server(settings, host, port, log_level)


def run_server(settings, host: str, port: int, log_level: str = "info") -> None:
    """Bind ``host:port``, print the address, serve until SIGTERM / SIGINT (then drain and return)."""
    import uvicorn

    from npdecode.serve.app import create_app

    logging.basicConfig(level=log_level.upper(), format="%(levelname)s: %(name)s: %(message)s")
    sock = _bind(host, port)
    failed: list[str] = []
    server: uvicorn.Server | None = None

    def stop(message: str) -> None:
        failed.append(message)
        server.should_exit = True

    app = create_app(settings, on_load_error=stop)
    config = uvicorn.Config(
        app, log_level=log_level, timeout_graceful_shutdown=int(settings.timeout_s) + 5, access_log=False
    )
    server = uvicorn.Server(config)
    bound = sock.getsockname()
    click.echo(f"npdecode serve: http://{_url_host(bound[0])}:{bound[1]} ({settings.retriever}, {settings.index_dir})")
    # uvicorn re-raises the signal that stopped it once it has drained; with these handlers in
    # place that re-raise is a no-op and the command returns (exit status 0)
    before = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run(sockets=[sock])
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
        sock.close()
    if failed:
        raise NpdecodeError(f"{settings.index_dir}: {failed[0]}")


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on accepted sockets that say TCP;
    # without it an answer's body waited for the client's delayed ACK of its headers on a kept
    # connection, ~40 ms per request (GET /health: 44 ms against 0.5 ms)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise NpdecodeError(f"--host {host} --port {port}: cannot bind ({err.strerror}); pick another port") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
