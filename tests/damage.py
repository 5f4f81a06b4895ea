"""Ways a file on disk goes bad, for the integrity tests: cut short, overwritten in place, gone."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

HOW = ("truncate", "flip", "delete")


def damage(path: Path, how: str, seed: int = 0) -> None:
    """``truncate``: keep the first half; ``flip``: XOR up to 4 KiB at the middle with random
    nonzero bytes (size unchanged, every byte of the span changed); ``delete``: remove it."""
    size = path.stat().st_size
    if how == "truncate":
        os.truncate(path, size // 2)
    elif how == "flip":
        span = min(4096, max(1, size // 2))
        start = (size - span) // 2
        noise = np.random.default_rng(seed).integers(1, 256, span, dtype=np.uint8)
        with open(path, "r+b") as fh:
            fh.seek(start)
            old = np.frombuffer(fh.read(span), dtype=np.uint8)
            fh.seek(start)
            fh.write((old ^ noise).tobytes())
    elif how == "delete":
        path.unlink()
    else:
        raise ValueError(f"unknown damage {how!r}; use one of {HOW}")


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    """(exit status, stdout + stderr) of ``npdecode ARGS`` run in-process (a traceback fails the test)."""
    from npdecode.cli import main

    capsys.readouterr()
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out + out.err
