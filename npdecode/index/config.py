"""Index settings: one pydantic model, loaded from YAML (``configs/index-*.yml``), strict keys."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from npdecode.config import read_mapping, validated


class IndexConfig(BaseModel):
    """How ``npdecode index`` turns a corpus into an index dir (DESIGN.md, "Np Decoding").

    Every field has a default, so an empty YAML file is a valid config.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Identifiers (step 1): words of text appended to an empty/shared title, at most this many,
    # so a corpus of near-duplicates cannot produce identifiers as long as the documents.
    max_identifier_words: int = Field(32, ge=1)
    # CE extraction (step 2): the paper truncates `identifier + text` to 512 tokens.
    max_length: int = Field(512, ge=8)
    # Length-bucketed batches: at most this many (padded) tokens and documents per batch.
    batch_tokens: int = Field(16384, ge=64)
    batch_size: int = Field(64, ge=1)
    # Documents per shard: the unit of resume and of work spread over devices.
    shard_size: int = Field(2048, ge=1)
    # "auto": bf16 autocast on CUDA devices that support it, fp32 elsewhere.
    precision: Literal["auto", "32", "bf16"] = "auto"
    accelerator: str = "auto"
    devices: int = Field(1, ge=1)
    num_nodes: int = Field(1, ge=1)
    # "auto": ddp_spawn for several processes on one node (the caller's process keeps the
    # corpus and writes the index), ddp across nodes (each node runs the command itself).
    strategy: str = "auto"
    progress: bool = True
    # Compression (step 3): k centroids per token id; 0 turns clustering off (CE = raw).
    k: int = Field(5, ge=0)
    kmeans_iterations: int = Field(20, ge=1)
    seed: int = 0
    # Also keep the raw (unclustered) CE vectors and a store over them.
    raw_ce: bool = False
    # FAISS store (step 7): any index_factory string; inner product metric.
    factory: str = "Flat"
    # Which trie mode `npdecode search` decodes with (step 6): CE ids, token ids (log-sum-exp
    # over a token's rows) or group (token trie, any row of an allowed token; the authors' default).
    trie_mode: Literal["ce", "token", "group"] = "ce"


def load_index_config(path: str | Path | None = None, **overrides: object) -> IndexConfig:
    """Read ``path`` (YAML mapping; None = defaults) and apply non-None ``overrides``."""
    data = read_mapping(path, "index config")
    data.update({key: value for key, value in overrides.items() if value is not None})
    return validated(IndexConfig, data, path if path is not None else "index options", "index config")


# How the work is spread over processes and shown: never changes what is computed, so a resumed
# build may use other values.
PLACEMENT_KEYS = frozenset({"devices", "num_nodes", "strategy", "accelerator", "progress"})
# What an append may set differently from the build: placement, batching and precision (each
# segment records its precision); every other key defines the index's content.
APPEND_KEYS = PLACEMENT_KEYS | {"batch_tokens", "batch_size", "shard_size", "precision"}
