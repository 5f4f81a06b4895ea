"""Raw CE (``--raw-ce``): every occurrence's unclustered vector kept on disk, written shard by shard.

```
segments/<seg>/raw.safetensors   vectors (N, d) float32, tokens (N,) int64, rows (N,) int64 (CE id)
raw-store-<gen>/part-<p>.faiss   FAISS stores (the index's ``factory``) of consecutive occurrences,
                                 at most ``part_rows`` each (``.pt`` without faiss); ids run on
                                 from one part to the next, in occurrence order over all segments
```

A build never holds the raw vectors at once: ``raw.safetensors`` is written header first (its
shapes are known from the counts), then each tensor shard by shard; the store is cut into parts
of at most ``cluster_memory_mb`` of vectors, each built and written before the next is read. An
append links the previous generation's parts into the new one (no copy) and adds its own.
:class:`RawStore` searches all parts and merges their top-k (exact over the parts for ``Flat``).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from npdecode.atomic import atomic_file
from npdecode.index.store import CEStore, load_store


class RawSource:
    """The raw CE of one segment, read in chunks: from the build's shards on disk
    (:meth:`from_shards`) or from arrays in memory (:meth:`from_arrays`, an append)."""

    def __init__(self, n: int, dim: int, chunks: Callable[[str], Iterator[np.ndarray]], rows: np.ndarray) -> None:
        self.n, self.dim, self._chunks, self.rows = n, dim, chunks, np.asarray(rows)

    @classmethod
    def from_arrays(cls, vectors: np.ndarray, tokens: np.ndarray, rows: np.ndarray) -> RawSource:
        arrays = {"vectors": vectors, "tokens": tokens}
        return cls(len(vectors), vectors.shape[1], lambda key: iter([arrays[key]]), rows)

    @classmethod
    def from_shards(cls, shards, n: int, rows: np.ndarray) -> RawSource:
        """``shards``: :class:`npdecode.index.streaming.Shards` (read one tensor at a time)."""
        return cls(n, shards.dim(), lambda key: (shards.read(s, key)[key] for s in range(shards.n)), rows)

    def chunks(self, key: str) -> Iterator[np.ndarray]:
        """``vectors`` (n_i, d) float32, ``tokens`` (n_i,) int64 or ``rows`` (n,) int64, in order."""
        if key == "rows":
            return iter([self.rows])
        return self._chunks(key)


_DTYPES = {"vectors": ("F32", np.float32), "tokens": ("I64", np.int64), "rows": ("I64", np.int64)}


def write_raw_file(path: Path, source: RawSource) -> None:
    """``raw.safetensors`` of ``source``, streamed (the format: an 8-byte header length, the
    JSON header with every tensor's dtype, shape and byte range, then the bytes in that order)."""
    shapes = {"vectors": [source.n, source.dim], "tokens": [source.n], "rows": [source.n]}
    header, start = {}, 0
    for key, shape in shapes.items():
        size = int(np.prod(shape)) * np.dtype(_DTYPES[key][1]).itemsize
        header[key] = {"dtype": _DTYPES[key][0], "shape": shape, "data_offsets": [start, start + size]}
        start += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with atomic_file(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(text)) + text)
        for key, shape in shapes.items():
            written = 0
            for chunk in source.chunks(key):
                chunk = np.ascontiguousarray(chunk, dtype=_DTYPES[key][1])
                fh.write(chunk.tobytes())
                written += len(chunk)
            if written != shape[0]:
                raise RuntimeError(f"{path}: {written} {key} written, {shape[0]} expected; rebuild the index")


def part_rows(dim: int, memory_mb: float) -> int:
    """Vectors per store part: as many float32 vectors of ``dim`` as ``memory_mb`` holds."""
    return max(1, int(memory_mb * 2**20 // (4 * max(dim, 1))))


def write_parts(
    out_dir: Path, vectors: Iterator[np.ndarray], dim: int, factory: str, rows_per_part: int, first: int = 0
) -> list[str]:
    """Stores of consecutive vectors, each at most ``rows_per_part``, as ``part-<p>`` files
    (``p`` from ``first``) in ``out_dir``; returns their file names."""
    out_dir.mkdir(parents=True, exist_ok=True)
    names, pending, count, part = [], [], 0, first

    def flush() -> None:
        nonlocal pending, count, part
        store = CEStore(dim, factory)
        store.add(np.concatenate(pending) if len(pending) > 1 else pending[0])
        names.append(store.save(out_dir / f"part-{part:05d}").name)
        pending, count, part = [], 0, part + 1

    for chunk in vectors:
        at = 0
        while at < len(chunk):
            take = min(rows_per_part - count, len(chunk) - at)
            pending.append(np.ascontiguousarray(chunk[at : at + take], dtype=np.float32))
            count += take
            at += take
            if count == rows_per_part:
                flush()
    if count:
        flush()
    return names


def link_parts(old_dir: Path, new_dir: Path) -> int:
    """Hard-link (copy where links fail) the parts of ``old_dir`` into ``new_dir``; returns how
    many. A store of one file (``old_dir.faiss``/``.pt``, indexes built before parts) becomes
    part 0."""
    new_dir.mkdir(parents=True, exist_ok=True)
    if not old_dir.is_dir() and any(old_dir.with_suffix(s).is_file() for s in (".faiss", ".pt")):
        load_store(old_dir).save(new_dir / "part-00000")
        return 1
    parts = sorted(p for p in old_dir.iterdir() if p.name.startswith("part-")) if old_dir.is_dir() else []
    for part in parts:
        target = new_dir / part.name
        target.unlink(missing_ok=True)
        try:
            os.link(part, target)
        except OSError:
            shutil.copy2(part, target)
    return len(parts)


def part_files(store_dir: Path) -> list[Path]:
    return sorted(p for p in Path(store_dir).iterdir() if p.name.startswith("part-") and p.suffix in {".faiss", ".pt"})


class RawStore:
    """Nearest raw CE over every part of a ``raw-store-<gen>/`` dir (ids: occurrence order)."""

    def __init__(self, store_dir: str | Path, *, device: str = "cpu") -> None:
        self.parts = [load_store(p.with_suffix(""), device=device) for p in part_files(Path(store_dir))]
        sizes = [p.ntotal for p in self.parts]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)

    @property
    def ntotal(self) -> int:
        return int(self.offsets[-1])

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` by inner product over all parts: scores (q, k), ids (q, k) (-inf / -1 pad);
        ties go to the lower id, as within one store."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        all_scores, all_ids = [], []
        for offset, part in zip(self.offsets, self.parts):
            scores, ids = part.search(queries, k)
            all_scores.append(scores)
            all_ids.append(np.where(ids >= 0, ids + offset, -1))
        if not self.parts:
            return np.full((len(queries), k), -np.inf, np.float32), np.full((len(queries), k), -1, np.int64)
        scores, ids = np.concatenate(all_scores, axis=1), np.concatenate(all_ids, axis=1)
        order = np.lexsort((np.where(ids < 0, np.iinfo(np.int64).max, ids), -scores), axis=1)[:, :k]
        return np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)
