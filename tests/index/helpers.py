"""Shared helpers for index tests: toy corpora on disk and fast index configs."""

from __future__ import annotations

import json
from pathlib import Path

from npdecode.index.config import IndexConfig
from tests.tiny_models import toy_corpus


def write_jsonl(corpus: dict[str, dict[str, str]], path: Path) -> Path:
    """Write a BEIR-style ``.jsonl`` corpus."""
    with open(path, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps({"_id": doc_id, **doc}) + "\n" for doc_id, doc in corpus.items())
    return path


def toy_corpus_file(tmp_path: Path, n_docs: int = 12, seed: int = 0, name: str = "corpus.jsonl") -> Path:
    return write_jsonl(toy_corpus(n_docs, seed), tmp_path / name)


def fast_config(**overrides) -> IndexConfig:
    """Small shards and batches (several of each on a toy corpus), no progress bar, CPU."""
    base = {
        "shard_size": 5,
        "batch_tokens": 128,
        "batch_size": 3,
        "progress": False,
        "accelerator": "cpu",
        "max_length": 64,
    }
    base.update(overrides)
    return IndexConfig(**base)
