"""Index settings: one pydantic model, loaded from YAML (``configs/index-*.yml``), strict keys."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from npdecode.config import read_mapping, validated


class IndexConfig(BaseModel):
    """How ``npdecode index`` turns a corpus into an index dir (docs/np-decoding.md, steps 1-5).

    Every field has a default, so an empty YAML file is a valid config.
    """

    # a docstring under a field is its description: docs/config-index.md is generated from them
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    max_identifier_words: int = Field(32, ge=1)
    """Identifiers (step 1): words of text appended to an empty or shared title, at most this many,
    so a corpus of near-duplicates cannot produce identifiers as long as the documents."""
    max_length: int = Field(512, ge=8)
    """CE extraction (step 2): ``identifier + text`` is cut to this many tokens (the paper's 512;
    cut further to what the backbone's positions allow)."""
    batch_tokens: int = Field(16384, ge=64)
    """Length-bucketed encoding batches: at most this many (padded) tokens per batch."""
    batch_size: int = Field(64, ge=1)
    """Length-bucketed encoding batches: at most this many documents per batch."""
    shard_size: int = Field(2048, ge=1)
    """Documents per shard: the unit of resume and of work spread over devices."""
    precision: Literal["auto", "32", "bf16"] = "auto"
    """Precision of the CE computation; auto: bf16 autocast on CUDA devices that support it, fp32
    elsewhere. Each segment records it."""
    accelerator: str = "auto"
    """Lightning accelerator of the encoding loop: auto, cpu, gpu, ..."""
    devices: int = Field(1, ge=1)
    """Devices per node that encode."""
    num_nodes: int = Field(1, ge=1)
    """Nodes that encode (each runs the command itself)."""
    strategy: str = "auto"
    """Lightning strategy; auto: ddp_spawn for several processes on one node (the caller's process
    keeps the corpus and writes the index), ddp across nodes."""
    progress: bool = True
    """Show progress bars."""
    k: int = Field(5, ge=0)
    """Compression (step 4): at most k CE rows (k-means centroids) per token id; 0 turns clustering
    off (every occurrence keeps its own row)."""
    kmeans_iterations: int = Field(20, ge=1)
    """k-means iterations per token."""
    kmeans_sample: int | None = Field(None, ge=0)
    """A token with more occurrences than this is clustered on a seeded sample of this many of
    them (each occurrence still goes to its nearest centroid), so memory does not grow with the
    corpus; default (null) 256·k, 0: every occurrence (memory grows with the token's count)."""
    cluster_memory_mb: float = Field(2048, gt=0)
    """Clustering holds at most about this many MB of sampled raw CE at a time (tokens are
    clustered in id ranges that fit, the encoded shards streamed from disk once per range); with
    raw_ce, the raw store's parts hold at most this much each. Never changes the CE table."""
    seed: int = 0
    """Seed of the k-means initialisation."""
    raw_ce: bool = False
    """Also keep the raw (unclustered) CE vectors (raw.safetensors, written shard by shard) and a
    store over them in parts (raw-store-<gen>/)."""
    factory: str = "Flat"
    """FAISS store of the CE table: any index_factory string; inner-product metric."""
    trie_mode: Literal["ce", "token", "group"] = "ce"
    """The trie mode ``npdecode search`` decodes with by default (step 7): ce (CE ids), token (token
    ids, log-sum-exp over a token's rows) or group (token trie, any row of an allowed token; the
    authors' default)."""


def kmeans_sample_size(config: IndexConfig) -> int | None:
    """The per-token sample size of the clustering, None for no sampling."""
    if config.kmeans_sample is None:
        return 256 * config.k
    return config.kmeans_sample or None


def load_index_config(path: str | Path | None = None, **overrides: object) -> IndexConfig:
    """Read ``path`` (YAML mapping; None = defaults) and apply non-None ``overrides``."""
    data = read_mapping(path, "index config")
    data.update({key: value for key, value in overrides.items() if value is not None})
    return validated(IndexConfig, data, path if path is not None else "index options", "index config")


# How the work is spread over processes and shown: never changes what is computed, so a resumed
# build may use other values.
PLACEMENT_KEYS = frozenset({"devices", "num_nodes", "strategy", "accelerator", "progress", "cluster_memory_mb"})
# What an append may set differently from the build: placement, batching and precision (each
# segment records its precision); every other key defines the index's content.
APPEND_KEYS = PLACEMENT_KEYS | {"batch_tokens", "batch_size", "shard_size", "precision"}
