"""A real ``npdecode serve`` process on a free loopback port, for the serve tests and benchmark."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Self

from npdecode.client import Client, ServerError

REPO = Path(__file__).resolve().parents[2]


class ServerProcess:
    """``npdecode serve INDEX_DIR --port 0 ARGS`` in a subprocess; ``.client`` once it is healthy."""

    def __init__(self, index_dir: Path, *args: str, threads: int = 1, log: Path | None = None) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "0"}
        self.log = log
        self._log_file = open(log, "w") if log is not None else None  # noqa: SIM115 - closed in __exit__
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "npdecode", "serve", str(index_dir), "--port", "0", "--log-level", "warning", *args],
            stdout=subprocess.PIPE,
            stderr=self._log_file or subprocess.DEVNULL,
            text=True,
            cwd=REPO,
            env=env,
        )
        line = self.proc.stdout.readline()  # "npdecode serve: http://127.0.0.1:PORT (...)"
        if not line.startswith("npdecode serve: "):
            self.proc.kill()
            raise RuntimeError(f"server did not start (exit {self.proc.wait()}): {line!r} {self._log_tail()}")
        self.url = line.split()[2]
        self.client = Client(self.url, timeout=60)

    def wait_healthy(self, timeout: float = 120.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode} {self._log_tail()}")
            try:
                return self.client.health()
            except ServerError as err:
                assert err.status == 503
            except OSError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"server not healthy after {timeout} s")

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM, then the exit status (graceful shutdown)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()

    def rss_mib(self) -> float:
        """The server's resident memory (Linux /proc)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    def _log_tail(self) -> str:
        return self.log.read_text()[-2000:] if self.log is not None and self.log.is_file() else ""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self._log_file is not None:
            self._log_file.close()
