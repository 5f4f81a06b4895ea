"""Dataset registry for ``npdecode eval --dataset NAME``.

- ``beir/<name>`` (``beir/cqadupstack/<forum>``): every BEIR dataset;
- ``nq``: KILT Natural Questions, page level (R-precision);
- ``nq320k``: the DSI/NCI Natural Questions split (Hits@k, MRR@100);
- a local folder path: a BEIR-layout dataset.
"""

from __future__ import annotations

from pathlib import Path

from npdecode.errors import NpdecodeError
from npdecode.eval.datasets.base import Dataset
from npdecode.eval.datasets.beir import load_beir, load_beir_folder
from npdecode.eval.datasets.kilt import load_kilt_nq
from npdecode.eval.datasets.nq320k import load_nq320k

SPLITS = ("test", "dev", "train")


def load_dataset(name: str, split: str = "test", data_dir: str | Path | None = None, cache: Path | None = None) -> Dataset:
    """Resolve ``name`` to a :class:`Dataset` (downloading into ``cache`` when needed)."""
    from npdecode.cache import cache_root

    cache = Path(cache) if cache is not None else cache_root()
    data_dir = Path(data_dir) if data_dir is not None else None
    if split not in SPLITS:
        raise NpdecodeError(f"--split {split!r}: use one of {', '.join(SPLITS)}")
    if name.startswith("beir/"):
        return load_beir(name.removeprefix("beir/"), split, data_dir, cache)
    if name == "nq":
        return load_kilt_nq(split, data_dir, cache)
    if name == "nq320k":
        return load_nq320k(split, data_dir, cache)
    if Path(name).is_dir():
        return load_beir_folder(Path(name), split)
    raise NpdecodeError(
        f"unknown dataset {name!r}: use beir/<name>, nq, nq320k, or the path of a BEIR-layout folder"
    )


__all__ = ["SPLITS", "Dataset", "load_dataset"]
