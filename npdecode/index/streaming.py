"""Step 3 of Np Decoding over the encoded shards on disk, in bounded memory.

:func:`npdecode.index.clustering.cluster_by_token` needs every raw CE vector in memory at once
(~6 KB per identifier-token occurrence at d=768: 225 GB for KILT's 37M). Here the shards stay
on disk and are read one at a time:

1. a counting pass reads only the shards' token ids (and checks them against the identifiers);
2. the tokens are cut into id ranges whose samples (``min(count, sample)`` vectors per token,
   :func:`~npdecode.index.clustering.sample_ordinals`) fit ``memory_mb``; for each range one pass
   over the shards keeps its tokens' sampled vectors, clusters them token by token (as
   ``cluster_by_token`` does) and writes the range's rows to the work dir: a range whose file is
   there is done, so an interrupted clustering resumes;
3. an assignment pass sends each occurrence to the nearest row of its token, shard by shard.

Ranges and shards split over processes (``rank``/``world_size``): each process does every
``world_size``-th range and shard and writes files; rank 0 gathers them. What is computed never
depends on the memory budget or the number of processes, and is the in-memory result
(``cluster_by_token(..., sample=sample)``) whatever the budget.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from npdecode.atomic import atomic_file
from npdecode.index.clustering import Clustered, _pick_kmeans, nearest_rows, sample_ordinals, token_centroids
from npdecode.index.extraction import shard_path
from npdecode.index.identifiers import TokenLists

log = logging.getLogger(__name__)

# token * _KEY + ordinal identifies an occurrence; ordinals stay below 2**40
_KEY = 1 << 40


class Shards:
    """The encoded shards of a build (``shard-*.safetensors``), read one tensor at a time."""

    def __init__(self, shard_dir: Path, n_shards: int) -> None:
        self.dir, self.n = Path(shard_dir), n_shards

    def read(self, shard: int, *keys: str) -> dict[str, np.ndarray]:
        from safetensors import safe_open

        with safe_open(str(shard_path(self.dir, shard)), framework="numpy") as fh:
            return {key: fh.get_tensor(key) for key in keys}

    def dim(self) -> int:
        from safetensors import safe_open

        with safe_open(str(shard_path(self.dir, 0)), framework="numpy") as fh:
            return int(fh.get_slice("vectors").get_shape()[1])


def count_tokens(shards: Shards, ident_tokens: Sequence[Sequence[int]], shard_size: int) -> np.ndarray:
    """Occurrences per token id over all shards (one int64 per id up to the largest), each
    shard checked against the identifiers' token ids (the shard's groups, in order)."""
    counts = np.zeros(0, dtype=np.int64)
    for s in range(shards.n):
        part = shards.read(s, "groups", "tokens")
        lo, hi = s * shard_size, min((s + 1) * shard_size, len(ident_tokens))
        expected = TokenLists.of(ident_tokens[lo:hi]).flat
        if not np.array_equal(part["groups"], np.arange(lo, hi)) or not np.array_equal(part["tokens"], expected):
            raise RuntimeError(f"{shard_path(shards.dir, s)} does not match the identifiers; delete it and rebuild")
        here = np.bincount(part["tokens"])
        if len(here) > len(counts):
            counts = np.pad(counts, (0, len(here) - len(counts)))
        counts[: len(here)] += here
    return counts


def token_ranges(counts: np.ndarray, sample: int | None, dim: int, memory_mb: float) -> list[tuple[int, int]]:
    """Consecutive token-id ranges ``[lo, hi)`` of the present tokens whose sampled vectors
    (float32) fit ``memory_mb`` each; a token that alone exceeds it gets a range of its own."""
    present = np.flatnonzero(counts)
    sizes = counts[present] if sample is None else np.minimum(counts[present], sample)
    budget = max(1, int(memory_mb * 2**20 // (4 * dim)))  # vectors per range
    ranges, start, used = [], None, 0
    for token, size in zip(present.tolist(), sizes.tolist()):
        if start is not None and used + size > budget:
            ranges.append((start, token))
            start, used = None, 0
        if start is None:
            start = token
        used += size
    if start is not None:
        ranges.append((start, int(present[-1]) + 1))
    return ranges


def _ordinals(tokens: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """Each occurrence's 0-based index among its token's occurrences in corpus order, given
    ``seen[t]`` occurrences of ``t`` in earlier shards (``seen`` is advanced)."""
    order = np.argsort(tokens, kind="stable")
    sorted_tokens = tokens[order]
    first = np.searchsorted(sorted_tokens, sorted_tokens, side="left")
    ordinal = np.empty(len(tokens), dtype=np.int64)
    ordinal[order] = np.arange(len(tokens)) - first + seen[sorted_tokens]
    seen += np.bincount(tokens, minlength=len(seen))
    return ordinal


def cluster_range(
    shards: Shards,
    counts: np.ndarray,
    lo: int,
    hi: int,
    *,
    k: int,
    iterations: int,
    seed: int,
    sample: int | None,
    kmeans: Callable | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Rows (r, d) and their token ids (r,) of the tokens in ``[lo, hi)``: one pass over the
    shards keeps their sampled vectors, then each token is clustered as ``cluster_by_token`` does."""
    kmeans = kmeans or _pick_kmeans(None)
    wanted = []
    for token in np.flatnonzero(counts[lo:hi]) + lo:
        picked = sample_ordinals(int(counts[token]), sample, seed, int(token)) if sample else None
        if picked is not None and len(picked) < counts[token]:
            wanted.append(token * _KEY + picked)
    wanted_keys = np.concatenate(wanted) if wanted else np.zeros(0, np.int64)  # sorted: tokens, then ordinals
    capped = np.zeros(hi - lo, dtype=bool)
    for keys in wanted:
        capped[int(keys[0] // _KEY) - lo] = True
    # Each token's kept vectors go straight to their place in one array (token by token, corpus
    # order within a token: the in-memory order), so the range holds its sample once.
    kept = counts[lo:hi] if not sample else np.minimum(counts[lo:hi], sample)
    start = np.zeros(hi - lo + 1, dtype=np.int64)
    np.cumsum(kept, out=start[1:])
    if not start[-1]:
        return np.zeros((0, shards.dim()), np.float32), np.zeros(0, np.int64)
    buffer = np.empty((int(start[-1]), shards.dim()), dtype=np.float32)
    filled = np.zeros(hi - lo, dtype=np.int64)
    seen = np.zeros(len(counts), dtype=np.int64)
    for s in range(shards.n):
        tokens = shards.read(s, "tokens")["tokens"]
        ordinal = _ordinals(tokens, seen)
        inside = (tokens >= lo) & (tokens < hi)
        if not inside.any():
            continue
        keep = inside.copy()
        cap = np.zeros(len(tokens), dtype=bool)
        cap[inside] = capped[tokens[inside] - lo]
        if cap.any():
            keys = tokens[cap] * _KEY + ordinal[cap]
            at = np.searchsorted(wanted_keys, keys).clip(max=max(len(wanted_keys) - 1, 0))
            keep[cap] = wanted_keys[at] == keys
        idx = np.flatnonzero(keep)
        local = tokens[idx] - lo
        order = np.argsort(local, kind="stable")  # by token; corpus order within one
        idx, local = idx[order], local[order]
        rank = np.arange(len(local)) - np.searchsorted(local, local, side="left")
        vectors = shards.read(s, "vectors")["vectors"]
        buffer[start[local] + filled[local] + rank] = vectors[idx]
        filled += np.bincount(local, minlength=hi - lo)
        del vectors
    if not np.array_equal(filled, kept):
        raise RuntimeError(f"{shards.dir}: the shards' occurrences changed while clustering; rebuild")
    rows, row_tokens = [], []
    for t in np.flatnonzero(kept):
        centroids = token_centroids(buffer[start[t] : start[t + 1]], k, iterations, seed, kmeans)
        rows.append(centroids)
        row_tokens.append(np.full(len(centroids), lo + t, dtype=np.int64))
    return np.concatenate(rows).astype(np.float32), np.concatenate(row_tokens)


def assign_shard(shards: Shards, shard: int, rows: np.ndarray, row_start: np.ndarray) -> np.ndarray:
    """Row (0-based in ``rows``) of each occurrence of ``shard``: the nearest row of its token,
    whose rows are ``rows[row_start[t]:row_start[t + 1]]``."""
    part = shards.read(shard, "tokens", "vectors")
    tokens, vectors = part["tokens"], part["vectors"]
    out = np.empty(len(tokens), dtype=np.int64)
    order = np.argsort(tokens, kind="stable")
    bounds = np.flatnonzero(np.diff(tokens[order])) + 1
    for members in np.split(order, bounds) if len(tokens) else []:
        token = tokens[members[0]]
        lo, hi = row_start[token], row_start[token + 1]
        out[members] = lo + nearest_rows(vectors[members], rows[lo:hi])
    return out


def _save(path: Path, arrays: dict[str, np.ndarray], rank: int) -> None:
    from safetensors.numpy import save

    payload = {key: np.ascontiguousarray(value) for key, value in arrays.items()}
    with atomic_file(path, "wb") as fh:
        fh.write(save(payload, metadata={"rank": str(rank)}))  # which process made it


def _load(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(path))


def _mine(items: Sequence, rank: int, world_size: int) -> Iterator:
    return (item for i, item in enumerate(items) if i % world_size == rank)


def cluster_shards(
    shard_dir: Path,
    n_shards: int,
    ident_tokens: Sequence[Sequence[int]],
    shard_size: int,
    work_dir: Path,
    *,
    k: int,
    iterations: int = 20,
    seed: int = 0,
    sample: int | None = None,
    memory_mb: float = 2048,
    rank: int = 0,
    world_size: int = 1,
    barrier: Callable[[str], None] | None = None,
    progress: bool = False,
) -> Clustered | None:
    """The clustering of all shards' raw CE (``cluster_by_token(vectors, tokens, k, sample=sample)``
    of their concatenation) without holding it: see the module docstring. Work files go to
    ``work_dir`` (``clusters/``): a finished range or shard is not redone when run again.

    With ``world_size > 1`` every process calls it with its ``rank`` and a ``barrier(name)``
    that waits for all; rank 0 returns the result, the others None. ``k = 0`` needs every
    occurrence as a row: the table itself is the raw CE (read shard by shard)."""
    work = Path(work_dir) / "clusters"
    work.mkdir(parents=True, exist_ok=True)
    shards = Shards(shard_dir, n_shards)
    barrier = barrier or (lambda name: None)
    counts = count_tokens(shards, ident_tokens, shard_size)
    if k == 0:
        if rank != 0:
            return None
        vectors = np.concatenate([shards.read(s, "vectors")["vectors"] for s in range(n_shards)])
        tokens = np.concatenate([shards.read(s, "tokens")["tokens"] for s in range(n_shards)])
        return Clustered(vectors, tokens, np.arange(len(tokens), dtype=np.int64))
    dim = shards.dim() if n_shards else 0
    ranges = token_ranges(counts, sample, dim, memory_mb)
    plan = {
        "ranges": [list(r) for r in ranges],
        "k": k,
        "iterations": iterations,
        "seed": seed,
        "sample": sample,
        "shards": n_shards,
    }
    plan_file = work / "plan.json"
    if rank == 0:
        if plan_file.is_file() and json.loads(plan_file.read_text()) != plan:
            for stale in work.glob("*.safetensors"):  # another budget or setting: ranges differ
                stale.unlink()
        with atomic_file(plan_file) as fh:
            fh.write(json.dumps(plan))
    barrier("npdecode-cluster-plan")
    kmeans = _pick_kmeans(None)
    bar = _bar(progress and rank == 0, len(ranges), "clustering")
    for lo, hi in _mine(ranges, rank, world_size):
        path = work / f"rows-{lo:08d}-{hi:08d}.safetensors"
        if not path.is_file():
            rows, row_tokens = cluster_range(
                shards, counts, lo, hi, k=k, iterations=iterations, seed=seed, sample=sample, kmeans=kmeans
            )
            _save(path, {"rows": rows, "row_tokens": row_tokens}, rank)
        bar.update(world_size)
    bar.close()
    barrier("npdecode-cluster-rows")
    parts = [_load(work / f"rows-{lo:08d}-{hi:08d}.safetensors") for lo, hi in ranges]
    rows = np.concatenate([p["rows"] for p in parts]) if parts else np.zeros((0, dim), np.float32)
    row_tokens = np.concatenate([p["row_tokens"] for p in parts]) if parts else np.zeros(0, np.int64)
    del parts
    row_start = np.searchsorted(row_tokens, np.arange(len(counts) + 1))  # rows are in token order
    bar = _bar(progress and rank == 0, n_shards, "assigning")
    for s in _mine(range(n_shards), rank, world_size):
        path = work / f"assign-{s:05d}.safetensors"
        if not path.is_file():
            assignment = assign_shard(shards, s, rows, row_start)
            if len(rows) < 2**31 - 16:  # int32: half the memory of the gathered assignment
                assignment = assignment.astype(np.int32)
            _save(path, {"assignment": assignment}, rank)
        bar.update(world_size)
    bar.close()
    barrier("npdecode-cluster-assigned")
    if rank != 0:
        return None
    assignment = np.concatenate(
        [_load(work / f"assign-{s:05d}.safetensors")["assignment"] for s in range(n_shards)] or [np.zeros(0, np.int64)]
    )
    return Clustered(rows, row_tokens, assignment)


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _bar(show: bool, total: int, desc: str):
    if not show:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="part")
