"""npdecode: generative retrieval with Nonparametric Decoding.

Stages live in sub-packages: ``npdecode.merge`` (build backbones by merging),
``npdecode.index`` (corpus -> CE table, FAISS store, prefix trie), ``npdecode.train``
(Lightning training) and ``npdecode.eval`` (datasets, metrics, baselines, reports).
"""

__version__ = "0.1.0"

from npdecode.errors import NpdecodeError

__all__ = ["NpdecodeError", "__version__"]
