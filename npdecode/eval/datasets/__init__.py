"""Dataset registry for ``npdecode eval --dataset NAME``.

- ``beir/<name>`` (``beir/cqadupstack/<forum>``): every BEIR dataset;
- ``nq``: KILT Natural Questions, page level (R-precision);
- ``nq320k``: the DSI/NCI Natural Questions split (Hits@k, MRR@100);
- a local folder path: a BEIR-layout dataset.

Loaders register by name (``register_dataset``; a name ending in ``/`` is a family whose
loader receives the rest of the name), in the style of the merge and retriever registries:
a name is never taken twice, and third-party loaders come through the entry-point group
``npdecode.datasets`` (an entry point named NAME loads to a loader
``(rest_of_name, split, data_dir, cache) -> Dataset``).
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path

from npdecode.errors import NpdecodeError
from npdecode.eval.datasets.base import Dataset
from npdecode.eval.datasets.beir import load_beir, load_beir_folder
from npdecode.eval.datasets.kilt import load_kilt_nq
from npdecode.eval.datasets.nq320k import load_nq320k

SPLITS = ("test", "dev", "train")
ENTRY_POINT_GROUP = "npdecode.datasets"
Loader = Callable[[str, str, "Path | None", Path], Dataset]  # (rest of the name, split, data_dir, cache)

_LOADERS: dict[str, Loader] = {}
_plugins_loaded = False


def register_dataset(name: str, loader: Loader) -> None:
    """Add a dataset loader under ``name`` (``family/`` for a family of names); taken names are refused."""
    if name in _LOADERS:
        raise ValueError(f"dataset {name!r} is already registered")
    _LOADERS[name] = loader


register_dataset("beir/", load_beir)
register_dataset("nq", lambda rest, split, data_dir, cache: load_kilt_nq(split, data_dir, cache))
register_dataset("nq320k", lambda rest, split, data_dir, cache: load_nq320k(split, data_dir, cache))


def dataset_names() -> list[str]:
    _load_plugins()
    return sorted(_LOADERS)


def _load_plugins() -> None:
    global _plugins_loaded
    if not _plugins_loaded:
        _plugins_loaded = True
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            register_dataset(ep.name, ep.load())


def load_dataset(
    name: str, split: str = "test", data_dir: str | Path | None = None, cache: Path | None = None
) -> Dataset:
    """Resolve ``name`` to a :class:`Dataset` (downloading into ``cache`` when needed)."""
    from npdecode.cache import cache_root

    _load_plugins()
    cache = Path(cache) if cache is not None else cache_root()
    data_dir = Path(data_dir) if data_dir is not None else None
    if split not in SPLITS:
        raise NpdecodeError(f"--split {split!r}: use one of {', '.join(SPLITS)}")
    if name in _LOADERS and not name.endswith("/"):
        return _LOADERS[name]("", split, data_dir, cache)
    family = next((f for f in _LOADERS if f.endswith("/") and name.startswith(f)), None)
    if family is not None:
        return _LOADERS[family](name.removeprefix(family), split, data_dir, cache)
    if Path(name).is_dir():
        return load_beir_folder(Path(name), split)
    known = ", ".join(f"{n}<name>" if n.endswith("/") else n for n in sorted(_LOADERS))
    raise NpdecodeError(f"unknown dataset {name!r}: use {known}, or the path of a BEIR-layout folder")


__all__ = ["SPLITS", "Dataset", "dataset_names", "load_dataset", "register_dataset"]
