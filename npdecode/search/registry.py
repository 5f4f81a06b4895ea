"""The retriever interface and its registry.

A retriever answers ``search(queries, k) -> run``: ``queries = {qid: text}``,
``run = {qid: {doc_id: score}}`` with at most ``k`` documents per query. BM25, dense and the
generative retrievers (Np Decoding, vanilla GENRE-style) all implement it, so
``npdecode eval --retriever NAME`` compares them in one table.

A retriever is built by a factory ``factory(corpus_path, options) -> Retriever`` where
``corpus_path`` is the dataset's corpus (file or BEIR folder) and ``options`` a
:class:`~npdecode.search.options.SearchOptions`. Factories register by name, as merge methods
do: the modules of ``npdecode.search.retrievers`` register the built-ins when first needed
(their imports are light: BM25 never imports torch), third-party packages through the
entry-point group ``npdecode.retrievers`` (an entry point loads to a factory), and a name is
never taken twice unless ``replace`` says so (built-ins never).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from npdecode.errors import NpdecodeError
from npdecode.runs import Run
from npdecode.search.options import SearchOptions

ENTRY_POINT_GROUP = "npdecode.retrievers"


@runtime_checkable
class Retriever(Protocol):
    name: str

    def search(self, queries: Mapping[str, str], k: int) -> Run:
        """Top ``k`` documents per query with their scores."""
        ...


Factory = Callable[[Path, SearchOptions], Retriever]

_FACTORIES: dict[str, Factory] = {}
_BUILTIN: set[str] = set()
_loaded = False


def register_retriever(name: str, factory: Factory, *, replace: bool = False, builtin: bool = False) -> None:
    """Add a retriever factory under ``name``; a name already taken is refused (a built-in
    always; another one unless ``replace``)."""
    if not builtin:
        load_builtin_retrievers()  # so a name clash with a built-in is seen
    if name in _BUILTIN or (name in _FACTORIES and not replace):
        raise ValueError(f"retriever {name!r} is already registered")
    _FACTORIES[name] = factory
    if builtin:
        _BUILTIN.add(name)


def load_builtin_retrievers() -> None:
    """Import every module of ``npdecode.search.retrievers`` and the entry-point plugins (once)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    from npdecode.search import retrievers

    for info in pkgutil.iter_modules(retrievers.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{retrievers.__name__}.{info.name}")
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        factory = ep.load()
        if not callable(factory):
            raise NpdecodeError(
                f"entry point {ep.name!r} of group {ENTRY_POINT_GROUP!r} ({ep.value}) is not a "
                "retriever factory; fix or uninstall that plugin"
            )
        register_retriever(ep.name, factory)


def retriever_names() -> list[str]:
    load_builtin_retrievers()
    return sorted(_FACTORIES)


def get_factory(name: str) -> Factory:
    """The factory registered as ``name``; unknown names list the known ones."""
    load_builtin_retrievers()
    if name not in _FACTORIES:
        raise NpdecodeError(f"unknown retriever {name!r}; choose from: {', '.join(retriever_names())}")
    return _FACTORIES[name]


def build_retriever(
    name: str, corpus_path: Path | None, options: SearchOptions | Mapping[str, Any] | None = None
) -> Retriever:
    """The retriever ``name`` over ``corpus_path`` with ``options`` (an object, or a mapping
    whose None values mean the defaults)."""
    return get_factory(name)(corpus_path, SearchOptions.of(options))
