"""Where downloaded datasets, baseline indexes and encoded corpora are cached."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """``cache_dir`` if given, else ``$XDG_CACHE_HOME/npdecode`` (``~/.cache/npdecode``)."""
    if cache_dir:
        return Path(cache_dir)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "npdecode"
