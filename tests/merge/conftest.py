"""Session-scoped tiny checkpoints, built once per family and format."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tiny_models import save_checkpoint


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    """``checkpoints(family, seed=0, fmt="safetensors") -> Path``, built on first use."""
    root = tmp_path_factory.mktemp("merge-checkpoints")
    cache: dict[tuple, Path] = {}

    def get(family: str, seed: int = 0, fmt: str = "safetensors") -> Path:
        key = (family, seed, fmt)
        if key not in cache:
            cache[key] = save_checkpoint(family, root / f"{family}-{seed}-{fmt}", seed, fmt)
        return cache[key]

    return get
