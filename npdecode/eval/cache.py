"""Where downloaded datasets, baseline indexes and encoded corpora are cached."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def cache_root(options: Mapping[str, Any] | None = None) -> Path:
    """``options["cache_dir"]`` if given, else ``$XDG_CACHE_HOME/npdecode`` (``~/.cache/npdecode``)."""
    if options and options.get("cache_dir"):
        return Path(options["cache_dir"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "npdecode"
