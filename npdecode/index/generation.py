"""The derived files of an index dir: tries and FAISS stores of one *generation*.

A build writes generation 0; every append writes the next one (the tries extended, the stores
with the new rows added) and switches the manifest to it, then deletes the previous files. The
manifest names the current files, so a crash during an append leaves the old index usable.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import numpy as np

from npdecode.index.config import IndexConfig
from npdecode.index.store import CEStore
from npdecode.trie import Trie, build_trie

TRIE_MODES = ("ce", "token")


def build_tries(targets: dict[str, list[list[int]]], values: list[int]) -> dict[str, Trie]:
    """One trie per mode over the targets (CE ids + EOS row / token ids + EOS token); the value
    at each path's end is its identifier group index."""
    return {mode: build_trie(targets[mode], values, id_space=mode) for mode in TRIE_MODES}


def new_store(rows: np.ndarray, config: IndexConfig, device: str = "cpu") -> CEStore:
    """A store (config.factory, inner product) holding ``rows`` (R, d) float32."""
    store = CEStore(rows.shape[1], config.factory, device=device)
    store.add(rows)
    return store


def save_generation(
    index_dir: Path,
    generation: int,
    tries: dict[str, Trie],
    store: CEStore,
    raw=None,
    previous_raw: str | None = None,
    *,
    factory: str = "Flat",
    part_mb: float = 2048,
) -> dict[str, str]:
    """Write the tries and stores of ``generation``; returns the manifest's ``files`` entry.

    ``raw`` (a :class:`~npdecode.index.rawce.RawSource`): the new raw CE, added as parts to the
    raw store after those of ``previous_raw`` (the current generation's, linked, not copied)."""
    files = {}
    for mode, trie in tries.items():
        key, files[key] = save_trie(index_dir, generation, mode, trie)
    files["store"] = f"store-{generation:05d}"
    store.save(index_dir / files["store"])
    if raw is not None:
        from npdecode.index.rawce import link_parts, part_rows, write_parts

        files["raw_store"] = f"raw-store-{generation:05d}"
        out = index_dir / files["raw_store"]
        first = link_parts(index_dir / previous_raw, out) if previous_raw else 0
        write_parts(out, raw.chunks("vectors"), raw.dim, factory, part_rows(raw.dim, part_mb), first)
    return files


def save_trie(index_dir: Path, generation: int, mode: str, trie: Trie) -> tuple[str, str]:
    """Write the ``mode`` trie of ``generation``; returns its manifest key and file name."""
    name = f"trie-{mode}-{generation:05d}.npz"
    trie.save(index_dir / name)
    return f"trie_{mode}", name


def remove_generation(index_dir: Path, files: dict[str, str]) -> None:
    """Delete a superseded generation's files (after the manifest stopped naming them)."""
    for key, name in files.items():
        if key == "raw_store" and (index_dir / name).is_dir():
            shutil.rmtree(index_dir / name, ignore_errors=True)
            continue
        paths = (
            [index_dir / name]
            if key.startswith("trie")
            else [(index_dir / name).with_suffix(".faiss"), (index_dir / name).with_suffix(".pt")]
        )
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                Path(path).unlink()


def trie_counts(tries: dict[str, Trie]) -> dict[str, int]:
    return {f"trie_{mode}_nodes": int(trie.n_nodes) for mode, trie in tries.items()}
