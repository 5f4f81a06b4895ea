"""The CE memory as a lookahead of the constrained beam search (Np models, ``memory_weight``).

A generative retriever prunes by prefixes: after the first step only ``beam`` first tokens of
identifiers survive, and a decoder trained on some documents gives the paths of documents it
never saw (appended later, or another corpus) little probability at some step, so they are cut
before their identifier is complete. The CE table already knows every indexed document: the
mean of a document's identifier rows, scored against the mean of the query's encoder states
(the same encoder made both), ranks SciFact's documents at nDCG@10 0.53 (no training, no
pruning). This module turns that into a lookahead that the beam search adds to its scores:

- ``m(q, g) = cos(mean_t enc(q)_t, mean_{r in path(g)} CE[r])`` for every identifier group ``g``;
- ``H(q, n) = max_{g under n} m(q, g)`` for every trie node ``n`` (the best document the
  hypothesis can still reach: exact, so it never prunes the best-memory document away);
- a hypothesis at node ``n`` ranks by ``score / length**lp + weight * H(q, n)``; a finished one
  scores ``score / length**lp + weight * m(q, g)``.

With ``weight`` 0 decoding is unchanged. The rows are the index's (appended rows included), so
documents added later are in the memory at once; nothing is trained.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from npdecode.errors import NpdecodeError
from npdecode.trie import Trie


def group_vectors(ce: np.ndarray, paths: list[list[int]]) -> np.ndarray:
    """``(G, d)`` float32: the L2-normalised mean of each group's CE rows (``paths[g]``: CE ids,
    EOS excluded). A group without rows gets a zero vector (it scores 0)."""
    from npdecode.trie import flatten

    flat, offsets = flatten(paths)
    lengths = np.diff(offsets)
    out = np.zeros((len(paths), ce.shape[1]), dtype=np.float32)
    filled = np.flatnonzero(lengths)  # reduceat needs non-empty segments
    if len(filled):
        sums = np.add.reduceat(ce[flat].astype(np.float32), offsets[filled], axis=0)
        out[filled] = sums / lengths[filled, None]
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.where(norms > 0, norms, 1.0)


class CEMemory:
    """Per-query lookahead ``H (B, n_nodes)`` over a trie whose values are group ids.

    ``vectors`` (G, d): :func:`group_vectors` of the groups the trie's values index; ``weight``:
    how much a unit of cosine counts against a unit of (length-normalised) log-probability.
    """

    def __init__(self, trie: Trie, vectors: np.ndarray, weight: float, device: Any = None):
        if not np.isfinite(weight) or weight < 0:
            raise NpdecodeError(f"memory weight {weight}: must be a finite number >= 0")
        if len(trie.term_values) and int(trie.term_values.max()) >= len(vectors):
            raise NpdecodeError(
                f"the trie names group {int(trie.term_values.max())}, the memory has {len(vectors)} groups "
                "(documents.jsonl and the trie disagree); rebuild the index"
            )
        self.weight = float(weight)
        self.n_nodes = trie.n_nodes
        dev = torch.device(device) if device is not None else torch.device("cpu")
        self.vectors = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32)).to(dev)  # (G, d)
        # terminal i holds groups term_values[term_ptr[i]:term_ptr[i+1]]: value v -> its terminal's node
        counts = np.diff(trie.term_ptr)
        self.value_node = torch.from_numpy(np.repeat(trie.term_nodes, counts).astype(np.int64)).to(dev)
        self.values = torch.from_numpy(trie.term_values.astype(np.int64)).to(dev)
        parent, self.levels = trie.levels()
        self.parent = torch.from_numpy(parent).to(dev)  # parent[node]; root -> 0

    def query_vectors(self, enc: torch.Tensor, enc_mask: torch.Tensor) -> torch.Tensor:
        """``(B, d)``: the mean of each query's encoder states over its tokens, L2-normalised (the
        dense bi-encoder's query side when the encoder is the one that made the CE)."""
        mask = enc_mask.to(enc.dtype).unsqueeze(-1)  # (B, T, 1)
        mean = (enc * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return torch.nn.functional.normalize(mean.float(), dim=-1)

    def group_scores(self, enc: torch.Tensor, enc_mask: torch.Tensor) -> torch.Tensor:
        """``m (B, G)``: cosine of each query with each group's memory vector."""
        return self.query_vectors(enc, enc_mask).to(self.vectors.device) @ self.vectors.T

    def lookahead(self, enc: torch.Tensor, enc_mask: torch.Tensor) -> torch.Tensor:
        """``weight * H (B, n_nodes)``: the best memory score under each node (-inf: no group)."""
        m = self.group_scores(enc, enc_mask)  # (B, G)
        b = m.shape[0]
        h = torch.full((b, self.n_nodes), float("-inf"), device=m.device)
        h.scatter_reduce_(1, self.value_node.expand(b, -1), m[:, self.values], reduce="amax", include_self=True)
        for lo, hi in reversed(self.levels[1:]):  # deepest level first: a node's max reaches its parent
            if hi > lo:
                idx = self.parent[lo:hi].expand(b, -1)  # the parents of nodes lo..hi-1
                h.scatter_reduce_(1, idx, h[:, lo:hi].clone(), reduce="amax", include_self=True)
        return h.mul_(self.weight) if self.weight else torch.zeros_like(h)  # 0 * -inf would be NaN
