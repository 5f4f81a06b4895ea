"""Step 7 of Np Decoding: the FAISS store of the CE table (inner product).

``CEStore`` wraps a FAISS index built from a factory string ("Flat" by default, any
``faiss.index_factory`` string on request), cloned to the GPU when faiss-gpu and a CUDA device
are both present and asked for. Without faiss it falls back to exact inner product in torch,
which returns the same neighbours as "Flat". Saved as ``<name>.faiss`` (faiss) or
``<name>.pt`` (torch fallback); ``load_store`` reads either.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from npdecode.atomic import atomic_file
from npdecode.errors import NpdecodeError


def faiss_available() -> bool:
    """Whether faiss can be imported (checked when asked, never at import time)."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


class CEStore:
    """Nearest-CE search over (R, d) float32 rows by inner product."""

    def __init__(self, dim: int, factory: str = "Flat", *, backend: str = "auto", device: str = "cpu") -> None:
        if backend == "auto":
            backend = "faiss" if faiss_available() else "torch"
        if backend == "torch" and factory != "Flat":
            raise NpdecodeError(f"store factory {factory!r} needs faiss; install faiss-cpu or use factory 'Flat'")
        self.dim, self.factory, self.backend, self.device = dim, factory, backend, device
        self._rows = torch.zeros((0, dim), dtype=torch.float32)
        self._gpu_resources = None
        self._index = self._new_faiss_index() if backend == "faiss" else None

    def _new_faiss_index(self):
        import faiss

        try:
            index = faiss.index_factory(self.dim, self.factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as err:
            raise NpdecodeError(f"store factory {self.factory!r} rejected by faiss: {err}") from None
        index, self._gpu_resources = _to_gpu(index, self.device)
        return index

    @property
    def ntotal(self) -> int:
        """Number of rows stored."""
        return int(self._index.ntotal) if self._index is not None else len(self._rows)

    def add(self, rows: np.ndarray) -> None:
        """Append rows (n, d) float32; trains the index first if its factory needs training."""
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        if rows.ndim != 2 or rows.shape[1] != self.dim:
            raise ValueError(f"rows must be (n, {self.dim}), got {rows.shape}")
        if self._index is None:
            self._rows = torch.cat([self._rows, torch.from_numpy(rows)])
            return
        if not self._index.is_trained:
            if len(rows) == 0:
                return
            self._index.train(rows)
        self._index.add(rows)

    def search(self, queries: np.ndarray, k: int, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` rows by inner product: scores (q, k) float32 and row ids (q, k) int64.

        Fewer than ``k`` stored rows: missing places hold score -inf and id -1 (faiss's
        convention), in both backends.
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if self._index is not None:
            scores, ids = self._index.search(queries, k)
            scores = np.where(ids < 0, -np.inf, scores).astype(np.float32)
            return scores, ids.astype(np.int64)
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        ids = np.full((len(queries), k), -1, dtype=np.int64)
        take = min(k, len(self._rows))
        rows = self._rows.to(self.device)
        for start in range(0, len(queries), chunk):
            q = torch.from_numpy(queries[start : start + chunk]).to(self.device)
            top = (q @ rows.T).topk(take, dim=1)  # (q, take), ties: lower id first
            scores[start : start + len(q), :take] = top.values.cpu().numpy()
            ids[start : start + len(q), :take] = top.indices.cpu().numpy()
        return scores, ids

    def save(self, path_without_suffix: str | Path) -> Path:
        """Write the store atomically; returns the file written."""
        base = Path(path_without_suffix)
        if self._index is not None:
            import faiss

            path = base.with_suffix(".faiss")
            index = faiss.index_gpu_to_cpu(self._index) if _is_gpu(self._index) else self._index
            with atomic_file(path, "wb") as fh:
                fh.write(faiss.serialize_index(index).tobytes())
            return path
        path = base.with_suffix(".pt")
        with atomic_file(path, "wb") as fh:
            torch.save({"rows": self._rows, "factory": self.factory}, fh)
        return path


def load_store(path_without_suffix: str | Path, *, device: str = "cpu") -> CEStore:
    """Read a store saved by ``CEStore.save`` (either backend)."""
    from npdecode.integrity import reading

    base = Path(path_without_suffix)
    remedy = f"rebuild the index it belongs to; `npdecode verify {base.parent}` lists every bad file"
    if base.with_suffix(".faiss").is_file() and faiss_available():
        import faiss

        with reading(base.with_suffix(".faiss"), remedy):
            index = faiss.deserialize_index(np.fromfile(base.with_suffix(".faiss"), dtype=np.uint8))
        store = CEStore.__new__(CEStore)
        store.dim, store.factory, store.backend, store.device = index.d, "loaded", "faiss", device
        store._rows = torch.zeros((0, index.d))
        store._index, store._gpu_resources = _to_gpu(index, device)
        return store
    if base.with_suffix(".pt").is_file():
        with reading(base.with_suffix(".pt"), remedy):
            saved = torch.load(base.with_suffix(".pt"), weights_only=True)
            dim = saved["rows"].shape[1]  # a file without the rows it should hold fails here too
        store = CEStore(dim, "Flat", backend="torch", device=device)
        store._rows = saved["rows"]
        return store
    if base.with_suffix(".faiss").is_file():
        raise NpdecodeError(f"{base.with_suffix('.faiss')}: reading it needs faiss; install faiss-cpu")
    raise NpdecodeError(f"{base}: no CE store (.faiss or .pt); rebuild the index")


def _to_gpu(index, device: str):
    """(index, resources): a GPU clone when the caller asked for cuda and this faiss build has
    GPU support, else the index itself. The resources must outlive the GPU index."""
    import faiss

    if not str(device).startswith("cuda") or not hasattr(faiss, "StandardGpuResources"):
        return index, None
    if not torch.cuda.is_available():
        return index, None
    ordinal = int(str(device).split(":")[1]) if ":" in str(device) else 0
    resources = faiss.StandardGpuResources()
    return faiss.index_cpu_to_gpu(resources, ordinal, index), resources


def _is_gpu(index) -> bool:
    return type(index).__name__.startswith("Gpu")
