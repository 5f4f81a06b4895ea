"""From encoded shards to a segment: special rows, per-token compression, document targets."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from npdecode.index.clustering import cluster_by_token
from npdecode.index.config import IndexConfig, kmeans_sample_size
from npdecode.index.identifiers import IdentifierGroup, TokenLists
from npdecode.index.layout import SPECIAL_ROWS, DocumentGroup
from npdecode.index.rawce import RawSource


def special_rows(backbone) -> tuple[np.ndarray, np.ndarray]:
    """CE rows of the decoder start and EOS tokens, each encoded alone (docs/np-decoding.md step 3).

    Returns vectors (2, d) float32 and their token ids (2,), in ``SPECIAL_ROWS`` order.
    """
    import torch

    inputs = backbone.special_ce_inputs()
    token_of = {"bos": backbone.start_row_token_id, "eos": backbone.eos_token_id}
    vectors = []
    with torch.inference_mode():
        for name in SPECIAL_ROWS:
            ids = torch.tensor([inputs[name]], dtype=torch.long, device=backbone.device)
            hidden = backbone.encode(ids, torch.ones_like(ids))  # (1, T, d)
            vectors.append(hidden[0, 0].float().cpu().numpy())
    return np.stack(vectors).astype(np.float32), np.array([token_of[n] for n in SPECIAL_ROWS], dtype=np.int64)


def read_occurrences(shard_dir: Path, ident_tokens: list[list[int]], shard_size: int) -> dict[str, np.ndarray]:
    """All shards' raw CE in group order, checked against the identifiers' token ids."""
    from npdecode.index.extraction import read_shards, shard_count

    occ = read_shards(shard_dir, shard_count(len(ident_tokens), shard_size))
    check_occurrences(occ, ident_tokens, f"{shard_dir}: encoded shards")
    return occ


def check_occurrences(occ: dict[str, np.ndarray], ident_tokens: Sequence[Sequence[int]], what: str) -> None:
    expected = TokenLists.of(ident_tokens).flat
    if not np.array_equal(occ["groups"], np.arange(len(ident_tokens))) or not np.array_equal(occ["tokens"], expected):
        raise RuntimeError(f"{what} do not match the identifiers; delete it and rebuild")


def assemble_segment(
    backbone,
    groups: list[IdentifierGroup],
    ident_tokens: list[list[int]],
    occ: dict[str, np.ndarray],
    config: IndexConfig,
):
    """The first segment of an index from the occurrences' raw CE (:func:`read_occurrences`):
    (rows (R, d), row token ids (R,), documents, raw CE or None)."""
    specials, special_tokens = special_rows(backbone)
    clustered = cluster_by_token(
        occ["vectors"],
        occ["tokens"],
        config.k,
        iterations=config.kmeans_iterations,
        seed=config.seed,
        sample=kmeans_sample_size(config),
    )
    ce_ids = clustered.assignment + len(specials)
    rows = np.concatenate([specials, clustered.rows])
    row_tokens = np.concatenate([special_tokens, clustered.row_tokens])
    records = make_records(groups, ident_tokens, ce_ids)
    raw = RawSource.from_arrays(occ["vectors"], occ["tokens"], ce_ids) if config.raw_ce else None
    return rows, row_tokens, records, raw


def cluster_index_shards(
    ident_tokens: list[list[int]],
    shard_dir: Path,
    work_dir: Path,
    config: IndexConfig,
    *,
    rank: int = 0,
    world_size: int = 1,
    barrier=None,
):
    """:func:`npdecode.index.streaming.cluster_shards` with the index config's settings: the
    clustering of a build's shards (rank 0 gets it, the other ranks of a split run None)."""
    from npdecode.index.extraction import shard_count
    from npdecode.index.streaming import cluster_shards

    return cluster_shards(
        shard_dir,
        shard_count(len(ident_tokens), config.shard_size),
        ident_tokens,
        config.shard_size,
        work_dir,
        k=config.k,
        iterations=config.kmeans_iterations,
        seed=config.seed,
        sample=kmeans_sample_size(config),
        memory_mb=config.cluster_memory_mb,
        rank=rank,
        world_size=world_size,
        barrier=barrier,
        progress=config.progress,
    )


def assemble_from_shards(
    backbone,
    groups: list[IdentifierGroup],
    ident_tokens: list[list[int]],
    shard_dir: Path,
    work_dir: Path,
    config: IndexConfig,
):
    """What :func:`assemble_segment` makes of :func:`read_occurrences`, with the raw CE left in
    the shards on disk (:mod:`npdecode.index.streaming`: bounded memory, resumable; ranges and
    shards another process of the build already clustered are read, not redone). With
    ``raw_ce`` the raw CE stays in the shards until written (a streaming pass)."""
    clustered = cluster_index_shards(ident_tokens, shard_dir, work_dir, config)
    if clustered is None:
        return None
    specials, special_tokens = special_rows(backbone)
    ce_ids = clustered.assignment
    ce_ids += len(specials)  # in place: one array per occurrence, not two
    rows = np.concatenate([specials, clustered.rows])
    row_tokens = np.concatenate([special_tokens, clustered.row_tokens])
    records = make_records(groups, ident_tokens, ce_ids)
    raw = None
    if config.raw_ce:  # read shard by shard when written (npdecode/index/rawce.py)
        from npdecode.index.extraction import shard_count
        from npdecode.index.streaming import Shards

        shards = Shards(shard_dir, shard_count(len(ident_tokens), config.shard_size))
        raw = RawSource.from_shards(shards, len(ce_ids), ce_ids)
    return rows, row_tokens, records, raw


def make_records(groups: Sequence[IdentifierGroup], ident_tokens, ce_ids: np.ndarray) -> RecordTable:
    """``documents.jsonl`` records: each group's identifier tokens and their CE ids."""
    return RecordTable(groups, TokenLists.of(ident_tokens), ce_ids)


class RecordTable(Sequence):
    """The :class:`DocumentGroup` records of a segment, made on demand from the groups, their
    token ids (CSR) and the CE id of every occurrence: a build of millions of documents writes
    ``documents.jsonl`` and the tries from these arrays without a list of records."""

    def __init__(self, groups: Sequence[IdentifierGroup], tokens: TokenLists, ce_ids: np.ndarray) -> None:
        if len(ce_ids) != tokens.total:
            raise ValueError(f"{len(ce_ids)} CE ids for {tokens.total} identifier tokens")
        self.groups, self.tokens, self.ce_ids = groups, tokens, np.asarray(ce_ids)

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        group = self.groups[i]
        lo, hi = self.tokens.offsets[i], self.tokens.offsets[i + 1]
        return DocumentGroup(
            group.identifier, list(group.doc_ids), group.digest, self.tokens[i], self.ce_ids[lo:hi].tolist()
        )

    def targets(self, mode: str, eos_ce: int, eos_token: int) -> tuple[np.ndarray, np.ndarray]:
        """Every record's :meth:`DocumentGroup.target` as flat ``(ids, offsets)``."""
        ids = self.ce_ids if mode == "ce" else self.tokens.flat
        n = len(self)
        offsets = self.tokens.offsets + np.arange(n + 1)  # one EOS more per record
        flat = np.empty(int(offsets[-1]), dtype=np.result_type(ids.dtype, np.int32))
        is_eos = np.zeros(len(flat), dtype=bool)
        is_eos[offsets[1:] - 1] = True
        flat[~is_eos] = ids
        flat[is_eos] = eos_ce if mode == "ce" else eos_token
        return flat, offsets


def write_first_generation(
    index_dir: Path,
    rows: np.ndarray,
    row_tokens: np.ndarray,
    records: Sequence[DocumentGroup],
    raw: RawSource | None,
    config: IndexConfig,
) -> tuple[dict, dict]:
    """Tries and stores of a fresh index (generation 0): ``(files, counts)`` for the manifest."""
    from npdecode.index.generation import TRIE_MODES, new_store, save_generation, save_trie
    from npdecode.trie import build_trie

    eos_ce = SPECIAL_ROWS.index("eos")
    eos_token = int(row_tokens[eos_ce])
    if not isinstance(records, RecordTable):
        records = make_records(records, [r.tokens for r in records], np.array([c for r in records for c in r.ce]))
    files, counts = {}, {}
    for mode in TRIE_MODES:  # one trie at a time: each is built, written and dropped
        trie = build_trie(records.targets(mode, eos_ce, eos_token), np.arange(len(records)), id_space=mode)
        key, files[key] = save_trie(index_dir, 0, mode, trie)
        counts[f"{key}_nodes"] = int(trie.n_nodes)
        del trie
    store = new_store(rows, config)
    files.update(
        save_generation(index_dir, 0, {}, store, raw, factory=config.factory, part_mb=config.cluster_memory_mb)
    )
    return files, counts
