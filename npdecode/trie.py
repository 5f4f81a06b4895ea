"""Prefix trie over id sequences as flat CSR arrays (numpy on disk, torch on the decoding device).

Nodes are numbered breadth-first with each node's children contiguous and sorted by id, so the
child reached through edge ``e`` (an index into ``edge_ids``) is node ``e + 1``: no child array
is stored. Memory: ``indptr`` (n_nodes + 1) + ``edge_ids`` (n_nodes - 1), both int32 up to 2**31
nodes, i.e. about 8 bytes per node (at most one node per token), plus the terminal map.

A *terminal* node ends a stored sequence and maps to one or more values (document group ids):
several documents may share one identifier. Sequences normally end with EOS, so terminals are
leaves. ``id_space`` records which ids the paths use: ``"ce"`` (CE rows) or ``"token"``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from npdecode.errors import NpdecodeError

ID_SPACES = ("ce", "token")


def _index_dtype(n: int) -> type:
    return np.int32 if n < 2**31 - 1 else np.int64


def flatten(sequences: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """``(tokens (sum L,), offsets (n + 1,) int64)`` from a list of id lists."""
    lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
    offsets = np.zeros(len(sequences) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    tokens = np.fromiter((t for s in sequences for t in s), dtype=np.int64, count=int(offsets[-1]))
    return tokens, offsets


@dataclass
class Trie:
    """CSR prefix trie. Node 0 is the root; children of node ``n`` are nodes
    ``indptr[n] + 1 .. indptr[n + 1]`` reached by ids ``edge_ids[indptr[n] : indptr[n + 1]]``.

    ``term_nodes`` (sorted, unique) are the terminal nodes; the values of ``term_nodes[i]`` are
    ``term_values[term_ptr[i] : term_ptr[i + 1]]``.
    """

    indptr: np.ndarray
    edge_ids: np.ndarray
    term_nodes: np.ndarray
    term_ptr: np.ndarray
    term_values: np.ndarray
    id_space: str = "ce"
    _torch: dict = field(default_factory=dict, repr=False, compare=False)  # device -> TorchTrie

    @property
    def n_nodes(self) -> int:
        return len(self.indptr) - 1

    @property
    def n_sequences(self) -> int:
        return len(self.term_values)

    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.indptr, self.edge_ids, self.term_nodes, self.term_ptr, self.term_values))

    def levels(self) -> tuple[np.ndarray, list[tuple[int, int]]]:
        """``(parent (n_nodes,) int64, levels)``: each node's parent (the root's: 0) and, per depth
        ``d``, the node range ``levels[d] = (lo, hi)`` (breadth-first numbering: the nodes of one
        depth are contiguous, a parent's number is lower than its children's)."""
        parent = np.repeat(np.arange(self.n_nodes, dtype=np.int64), np.diff(self.indptr).astype(np.int64))
        depth = np.zeros(self.n_nodes, dtype=np.int64)
        lo = 1
        while lo < self.n_nodes:  # one level per round: the nodes whose parents' depths are known
            hi = int(np.searchsorted(parent, lo, side="left")) + 1  # nodes c with parent < lo
            depth[lo:hi] = depth[parent[lo - 1 : hi - 1]] + 1
            lo = hi
        bounds = np.searchsorted(depth, np.arange(int(depth.max()) + 2) if self.n_nodes else [0])
        return np.concatenate([[0], parent]), [(int(bounds[d]), int(bounds[d + 1])) for d in range(len(bounds) - 1)]

    def children(self, node: int) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, child_nodes)`` of one node, ids ascending."""
        lo, hi = int(self.indptr[node]), int(self.indptr[node + 1])
        return self.edge_ids[lo:hi].astype(np.int64), np.arange(lo + 1, hi + 1, dtype=np.int64)

    def step(self, nodes: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Child of each ``nodes[i]`` through ``ids[i]``; -1 where that id is not allowed (or node -1)."""
        nodes = np.asarray(nodes, dtype=np.int64)
        ids = np.asarray(ids, dtype=np.int64)
        out = np.full(nodes.shape, -1, dtype=np.int64)
        rows = np.flatnonzero(nodes >= 0)
        if len(rows) == 0 or len(self.edge_ids) == 0:
            return out
        lo = self.indptr[nodes[rows]].astype(np.int64)
        hi = self.indptr[nodes[rows] + 1].astype(np.int64)
        want, left, right = ids[rows], lo.copy(), hi.copy()
        last = len(self.edge_ids) - 1
        while np.any(left < right):  # vectorized binary search; children ids are sorted per node
            active = left < right
            mid = (left + right) // 2
            go = active & (self.edge_ids[np.minimum(mid, last)] < want)
            left = np.where(go, mid + 1, left)
            right = np.where(active & ~go, mid, right)
        found = (left < hi) & (self.edge_ids[np.minimum(left, last)] == want)
        out[rows[found]] = left[found] + 1
        return out

    def walk(self, sequence: list[int]) -> int:
        """Node reached by ``sequence`` from the root, or -1 when it leaves the trie."""
        node = 0
        for t in sequence:
            node = int(self.step(np.array([node]), np.array([t]))[0])
            if node < 0:
                return -1
        return node

    def values(self, node: int) -> np.ndarray:
        """Values stored at ``node`` (empty when it is not terminal)."""
        i = int(np.searchsorted(self.term_nodes, node))
        if i < len(self.term_nodes) and self.term_nodes[i] == node:
            return self.term_values[self.term_ptr[i] : self.term_ptr[i + 1]].astype(np.int64)
        return np.empty(0, dtype=np.int64)

    def allowed_mask(self, nodes: np.ndarray, vocab_size: int) -> np.ndarray:
        """Boolean ``(N, vocab_size)``: ids allowed after each node (dense; for tests and small V)."""
        nodes = np.asarray(nodes, dtype=np.int64)
        mask = np.zeros((len(nodes), vocab_size), dtype=bool)
        counts = (self.indptr[nodes + 1] - self.indptr[nodes]).astype(np.int64)
        rows = np.repeat(np.arange(len(nodes)), counts)
        edges = _ranges(self.indptr[nodes].astype(np.int64), counts)
        mask[rows, self.edge_ids[edges]] = True
        return mask

    def sequences(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every stored (sequence, value) pair as ``(tokens, offsets, values)`` (inverse of build)."""
        indptr = self.indptr.astype(np.int64)
        parent = np.zeros(self.n_nodes, dtype=np.int64)
        parent[1:] = np.repeat(np.arange(self.n_nodes), np.diff(indptr))
        depth = np.zeros(self.n_nodes, dtype=np.int64)
        lo, hi, d = 0, 1, 0  # BFS numbering: each level is a contiguous node range
        while lo < hi:
            depth[lo:hi] = d
            lo, hi, d = int(indptr[lo]) + 1, int(indptr[hi]) + 1, d + 1
        ends = np.repeat(self.term_nodes.astype(np.int64), np.diff(self.term_ptr.astype(np.int64)))
        lengths = depth[ends]
        offsets = np.zeros(len(ends) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        tokens = np.empty(int(offsets[-1]), dtype=np.int64)
        cur, pos = ends.copy(), offsets[1:] - 1
        live = lengths > 0
        while live.any():  # walk all sequences up one level at a time
            tokens[pos[live]] = self.edge_ids[cur[live] - 1]
            cur[live] = parent[cur[live]]
            pos[live] -= 1
            live &= cur > 0
        return tokens, offsets, self.term_values.astype(np.int64)

    def extend(self, new_sequences: list[list[int]] | tuple[np.ndarray, np.ndarray], new_values: Any) -> Trie:
        """A trie holding the stored sequences plus ``new_sequences`` (a rebuild, vectorized)."""
        tokens, offsets, values = self.sequences()
        new_tokens, new_offsets = _as_flat(new_sequences)
        all_tokens = np.concatenate([tokens, new_tokens])
        all_offsets = np.concatenate([offsets, offsets[-1] + new_offsets[1:]])
        all_values = np.concatenate([values, np.asarray(new_values, dtype=np.int64)])
        return build_trie((all_tokens, all_offsets), all_values, id_space=self.id_space)

    def save(self, path: str | Path) -> None:
        """Write an ``.npz`` (uncompressed, atomically)."""
        from npdecode.atomic import atomic_file

        with atomic_file(path, "wb") as fh:
            np.savez(
                fh,
                indptr=self.indptr,
                edge_ids=self.edge_ids,
                term_nodes=self.term_nodes,
                term_ptr=self.term_ptr,
                term_values=self.term_values,
                id_space=np.array(self.id_space),
            )

    @classmethod
    def load(cls, path: str | Path, *, mmap: bool = True) -> Trie:
        """Read a trie file. ``mmap``: its arrays are memory-mapped (the file is an uncompressed
        ``.npz``), so loading costs the same for 100 or 40M nodes and pages are read as decoding
        touches them; otherwise (or for a compressed file) they are read into memory."""
        path = Path(path)
        if not path.is_file():
            raise NpdecodeError(f"{path}: trie file not found; build the index first")
        from npdecode.integrity import reading

        remedy = f"rebuild the index it belongs to; `npdecode verify {path.parent}` lists every bad file"
        with reading(path, remedy):
            z = _memmap_npz(path) if mmap else None
            if z is None:
                with np.load(path, allow_pickle=False) as npz:
                    z = {name: npz[name] for name in npz.files}
            return cls(z["indptr"], z["edge_ids"], z["term_nodes"], z["term_ptr"], z["term_values"], str(z["id_space"]))

    def to_torch(self, device: Any = None) -> TorchTrie:
        """The trie as torch tensors on ``device``, made once per device and kept."""
        key = str(device)
        if key not in self._torch:
            self._torch[key] = TorchTrie.from_trie(self, device)
        return self._torch[key]


def _memmap_npz(path: Path) -> dict[str, np.ndarray] | None:
    """The arrays of an uncompressed ``.npz`` memory-mapped in place (each member of the zip is a
    ``.npy`` stored as is, at an offset found from its local header); None if a member is
    compressed. Empty and 0-d arrays are read (there is nothing to map)."""
    import struct
    import zipfile

    out: dict[str, np.ndarray] = {}
    with zipfile.ZipFile(path) as zf, open(path, "rb") as fh:
        for info in zf.infolist():
            if info.compress_type != zipfile.ZIP_STORED:
                return None
            fh.seek(info.header_offset)
            local = fh.read(30)
            if len(local) < 30 or local[:4] != b"PK\x03\x04":
                raise ValueError(f"member {info.filename}: bad local header")
            name_len, extra_len = struct.unpack("<HH", local[26:30])
            start = info.header_offset + 30 + name_len + extra_len
            fh.seek(start)
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            offset = fh.tell()
            count = int(np.prod(shape)) if shape else 1
            if dtype.hasobject or offset + count * dtype.itemsize > start + info.file_size:
                raise ValueError(f"member {info.filename}: header and size disagree")
            name = info.filename.removesuffix(".npy")
            if count == 0 or not shape:
                out[name] = np.frombuffer(fh.read(count * dtype.itemsize), dtype=dtype, count=count).reshape(shape)
            else:
                order = "F" if fortran else "C"
                out[name] = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order=order)
    return out


def _ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Concatenated ``arange(s, s + c)`` for each pair, vectorized."""
    total = int(counts.sum())
    if total == 0:
        return np.empty(0, dtype=np.int64)
    first = np.repeat(starts - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)
    return first + np.arange(total, dtype=np.int64)


def _as_flat(sequences: Any) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(sequences, tuple):
        tokens, offsets = sequences
        tokens = np.asarray(tokens)
        if tokens.dtype not in (np.int32, np.int64):  # int32 ids stay as they are (half the memory)
            tokens = tokens.astype(np.int64)
        return tokens, np.asarray(offsets, dtype=np.int64)
    return flatten(sequences)


def build_trie(
    sequences: list[list[int]] | tuple[np.ndarray, np.ndarray], values: Any = None, *, id_space: str = "ce"
) -> Trie:
    """Build a trie from id sequences (a list of lists, or flat ``(tokens, offsets)``).

    ``values`` (n,) ints: the value stored at each sequence's end (default: its index).
    Vectorized level by level: at depth ``d`` the (parent, id) pairs of all sequences still
    running are deduplicated with one ``np.unique``, which also yields breadth-first numbering.
    """
    if id_space not in ID_SPACES:
        raise NpdecodeError(f"id_space {id_space!r} is not one of {ID_SPACES}")
    tokens, offsets = _as_flat(sequences)
    n = len(offsets) - 1
    values = np.arange(n, dtype=np.int64) if values is None else np.asarray(values, dtype=np.int64)
    if values.shape != (n,):
        raise NpdecodeError(f"got {len(values)} values for {n} sequences; give one value per sequence")
    if len(tokens) and tokens.min() < 0:
        raise NpdecodeError("sequence ids must be non-negative")
    starts, lengths = offsets[:-1], np.diff(offsets)
    vmax = int(tokens.max()) + 1 if len(tokens) else 1
    bound = 1 + len(tokens)  # nodes: the root and at most one per sequence position
    idx = _index_dtype(max(bound, vmax))
    ids = np.empty(len(tokens), dtype=idx)  # ids[j - 1]: the id on the edge into node j
    child_count = np.zeros(bound, dtype=idx)
    node = np.zeros(n, dtype=np.int64)  # current node of every sequence
    alive = np.flatnonzero(lengths > 0)
    n_nodes, depth = 1, 0
    while len(alive):
        key = node[alive] * vmax + tokens[starts[alive] + depth]
        uniq, inv = np.unique(key, return_inverse=True)  # sorted: by parent, then id
        ids[n_nodes - 1 : n_nodes - 1 + len(uniq)] = uniq % vmax
        parents, per_parent = np.unique(uniq // vmax, return_counts=True)
        child_count[parents] = per_parent
        node[alive] = n_nodes + inv.reshape(-1)
        n_nodes += len(uniq)
        depth += 1
        alive = alive[lengths[alive] > depth]
        del key, uniq, inv, parents, per_parent
    indptr = np.zeros(n_nodes + 1, dtype=idx)
    np.cumsum(child_count[:n_nodes], out=indptr[1:])
    del child_count
    order = np.argsort(node, kind="stable")
    term_nodes, counts = np.unique(node[order], return_counts=True)
    term_ptr = np.zeros(len(term_nodes) + 1, dtype=np.int64)
    np.cumsum(counts, out=term_ptr[1:])
    return Trie(
        indptr,
        ids[: n_nodes - 1],
        term_nodes.astype(idx),
        term_ptr.astype(idx),
        values[order].astype(_index_dtype(int(values.max(initial=0)) + 1)),
        id_space,
    )


@dataclass
class TorchTrie:
    """The CSR arrays as int64 torch tensors on the decoding device, plus a terminal flag per node."""

    indptr: Any  # (n_nodes + 1,)
    edge_ids: Any  # (n_nodes - 1,)
    is_terminal: Any  # (n_nodes,) bool
    trie: Trie

    @classmethod
    def from_trie(cls, trie: Trie, device: Any = None) -> TorchTrie:
        import torch

        term = np.zeros(trie.n_nodes, dtype=bool)
        term[trie.term_nodes.astype(np.int64)] = True
        as_t = lambda a: torch.as_tensor(np.asarray(a, dtype=np.int64), device=device)
        return cls(as_t(trie.indptr), as_t(trie.edge_ids), torch.as_tensor(term, device=device), trie)

    def levels(self) -> tuple[Any, list[tuple[int, int]]]:
        """:meth:`Trie.levels` with the parents as a tensor on this trie's device (computed once)."""
        import torch

        if getattr(self, "_levels", None) is None:
            parent, levels = self.trie.levels()
            self._levels = (torch.as_tensor(parent, device=self.indptr.device), levels)
        return self._levels

    def expand(self, nodes: Any) -> tuple[Any, Any, Any]:
        """All edges out of ``nodes`` (N,): ``(row (E,), ids (E,), child (E,))``, rows ascending."""
        import torch

        lo = self.indptr[nodes]
        counts = self.indptr[nodes + 1] - lo
        row = torch.repeat_interleave(torch.arange(len(nodes), device=nodes.device), counts)
        first = torch.cumsum(counts, 0) - counts  # start of each row's block in the flat output
        edge = lo[row] + torch.arange(len(row), device=nodes.device) - first[row]
        return row, self.edge_ids[edge], edge + 1


def group_rows_by_token(ce_token_ids: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CE-row -> token grouping for the token-id trie mode.

    Returns ``(tokens (G,), ptr (G + 1,), rows (V_ce,))``: the CE rows of ``tokens[g]`` are
    ``rows[ptr[g] : ptr[g + 1]]`` (tokens ascending, rows ascending within a token).
    """
    tid = np.asarray(ce_token_ids, dtype=np.int64)
    rows = np.argsort(tid, kind="stable")
    tokens, counts = np.unique(tid[rows], return_counts=True)
    ptr = np.zeros(len(tokens) + 1, dtype=np.int64)
    np.cumsum(counts, out=ptr[1:])
    return tokens, ptr, rows
