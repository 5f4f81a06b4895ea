"""The retriever interface of the evaluation harness and its registry.

A retriever answers ``search(queries, k) -> run``: ``queries = {qid: text}``,
``run = {qid: {doc_id: score}}`` with at most ``k`` documents per query. Baselines (BM25,
dense) and the generative retrievers (Np Decoding, vanilla GENRE-style) all implement it,
so ``npdecode eval --retriever NAME`` compares them in one table.

A retriever is built by a factory ``factory(corpus_path, options) -> Retriever`` where
``corpus_path`` is the dataset's corpus (file or BEIR folder) and ``options`` holds the CLI
settings (``index``, ``model``, ``batch_size``, ``device``, ``cache_dir``…). Built-in factories
are imported lazily by name, so asking for BM25 never imports torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from npdecode.errors import NpdecodeError


@runtime_checkable
class Retriever(Protocol):
    name: str

    def search(self, queries: Mapping[str, str], k: int) -> dict[str, dict[str, float]]:
        """Top ``k`` documents per query with their scores."""
        ...


Factory = Callable[[Path, Mapping[str, Any]], Retriever]

# name -> "module:attribute" of a factory, imported on first use
_BUILTIN: dict[str, str] = {
    "bm25": "npdecode.eval.bm25:build_bm25",
    "dense": "npdecode.eval.dense:build_dense",
    "np": "npdecode.index.retriever:build_np_retriever",
    "genre": "npdecode.index.retriever:build_genre_retriever",
}
_FACTORIES: dict[str, Factory] = {}


def register_retriever(name: str, factory: Factory, *, replace: bool = False) -> None:
    """Add a retriever factory; a name already taken is refused (a built-in always; a registered
    one unless ``replace``)."""
    if name in _BUILTIN or (name in _FACTORIES and not replace):
        raise ValueError(f"retriever {name!r} is already registered")
    _FACTORIES[name] = factory


def retriever_names() -> list[str]:
    return sorted({*_BUILTIN, *_FACTORIES})


def get_factory(name: str) -> Factory:
    """The factory registered as ``name``; unknown names list the known ones."""
    if name in _FACTORIES:
        return _FACTORIES[name]
    if name not in _BUILTIN:
        raise NpdecodeError(f"unknown retriever {name!r}; choose from: {', '.join(retriever_names())}")
    module, attr = _BUILTIN[name].split(":")
    return getattr(importlib.import_module(module), attr)


def build_retriever(name: str, corpus_path: Path, options: Mapping[str, Any]) -> Retriever:
    return get_factory(name)(corpus_path, options)
