"""The search stage: every retriever behind one interface, one registry and one options object.

- :mod:`~npdecode.search.options`: :class:`SearchOptions` (beam, length penalty, normalizer,
  batch size, device, ...), used by ``npdecode search``, ``npdecode eval`` and the Python API;
- :mod:`~npdecode.search.registry`: the ``Retriever`` protocol (``search(queries, k) -> run``),
  ``register_retriever`` / ``build_retriever`` and the ``npdecode.retrievers`` entry-point group;
- :mod:`~npdecode.search.retrievers`: the built-ins, ``bm25``, ``dense`` and the generative
  ``np`` and ``genre`` over an index dir;
- :mod:`~npdecode.search.cli`: ``npdecode search``.
"""

from npdecode.search.options import SearchOptions
from npdecode.search.registry import Retriever, build_retriever, register_retriever, retriever_names

__all__ = ["Retriever", "SearchOptions", "build_retriever", "register_retriever", "retriever_names"]
