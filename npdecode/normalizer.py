"""Approximate normalizer for Np decoding: ``logsumexp`` over FAISS's top-k CE rows, not all of them.

The exact score of an edge is ``logit - logsumexp(h · CEᵀ)``: one full product with the CE
table per decoder row and step. On a CPU that product dominates decoding once the table has
~10⁵ rows. :class:`IvfNormalizer` replaces it with an inverted-file (IVF) search: the CE rows
are clustered into ``nlist`` lists once, and each decoder row scores only the rows of its
``nprobe`` best lists, keeping the ``topk`` best logits. Their log-sum-exp is a lower bound of
the true normalizer (missed rows are left out), so scores come out higher than exact ones, by
the probability mass outside the top-k. With ``nprobe == nlist`` and ``topk >= V_ce`` it is exact.

The edge logits themselves stay exact (:class:`SparseLogits` computes ``h · ce[id]`` for the
allowed edges only), and the decoder raises each row's normalizer to at least its best allowed
logit, so an edge never scores above 0. Where a step has so many allowed edges that computing
them one by one costs more than the dense product (the root of a large trie), the decoder takes
the exact dense step instead. CPU only (faiss-cpu); on a GPU the exact product is cheap.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from npdecode.errors import NpdecodeError


class SparseLogits:
    """Logits ``h · CEᵀ`` (scaled ``h``) computed only where indexed: ``logits[rows, ids]`` with
    broadcastable index tensors, as the scorers index a dense (N, V_ce) matrix."""

    def __init__(self, hidden: torch.Tensor, ce: torch.Tensor):
        self.hidden, self.ce = hidden, ce  # (N, d) already scaled, (V_ce, d)

    def __getitem__(self, index: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        rows, ids = index
        h = self.hidden[rows]  # (..., d)
        return torch.einsum("...d,...d->...", h.float(), self.ce[ids].float())


log = logging.getLogger(__name__)


class IvfNormalizer:
    """FAISS IVF-Flat (inner product) over a CE table; :meth:`lse` approximates the normalizer.

    ``nlist`` inverted lists (default ``√V``, at most V/39 so that each centroid is trained on
    39+ rows; the k-means build grows with nlist², ~5 s at V = 160k on one core), ``nprobe``
    lists scanned per decoder row, ``topk`` logits kept. k-means is seeded. With ``cache_dir``
    (an index dir) the trained structure is saved there on first use, named by a digest of the
    table, ``nlist`` and the seed, and later searches load it instead of running k-means again.
    """

    def __init__(
        self,
        ce: torch.Tensor,
        *,
        nlist: int | None = None,
        nprobe: int = 16,
        topk: int = 512,
        seed: int = 0,
        threads: int | None = None,
        cache_dir: str | Path | None = None,
    ):
        try:
            import faiss
        except ImportError:
            raise NpdecodeError(
                "the approximate normalizer needs faiss; install npdecode[cpu] "
                "(faiss-cpu) or decode with the exact normalizer"
            ) from None
        if ce.is_cuda:
            raise NpdecodeError("the approximate normalizer runs on CPU; on a GPU decode with the exact one")
        rows = np.ascontiguousarray(ce.detach().float().cpu().numpy())
        v = rows.shape[0]
        nlist = nlist or max(1, min(int(math.sqrt(v)), v // 39))
        if not 1 <= nlist <= v or nprobe < 1 or topk < 1:
            raise NpdecodeError(
                f"nlist={nlist}, nprobe={nprobe}, topk={topk}: need 1 <= nlist <= {v} CE rows, nprobe >= 1, topk >= 1"
            )
        self.threads = threads
        saved = Path(cache_dir) / ivf_file_name(rows, nlist, seed) if cache_dir is not None else None
        index = _load_ivf(faiss, saved) if saved is not None and saved.is_file() else None
        self.loaded = index is not None  # built once for this table, nlist and seed; searches load it
        if index is None:
            index = _train_ivf(faiss, rows, nlist, seed, threads)
            if saved is not None:
                _save_ivf(faiss, index, saved)
        index.nprobe = min(nprobe, nlist)
        self.index, self.ce = index, ce
        self.nlist, self.nprobe, self.topk = nlist, index.nprobe, min(topk, v)

    def lse(self, hidden: torch.Tensor) -> torch.Tensor:
        """Approximate ``logsumexp(hidden · CEᵀ)`` per row: (N, d) scaled states -> (N,) fp32."""
        q = np.ascontiguousarray(hidden.detach().float().cpu().numpy())
        with faiss_threads(self.threads):
            scores, ids = self.index.search(q, self.topk)
        s = torch.from_numpy(scores)
        s = s.masked_fill(torch.from_numpy(ids) < 0, float("-inf"))  # fewer than topk rows in the probed lists
        return torch.logsumexp(s, dim=1).to(hidden.device)

    def settings(self) -> dict[str, Any]:
        return {"kind": "ivf", "nlist": self.nlist, "nprobe": self.nprobe, "topk": self.topk}


def ivf_file_name(rows: np.ndarray, nlist: int, seed: int) -> str:
    """The saved IVF structure's file name: it belongs to exactly this CE table, nlist and seed."""
    digest = hashlib.sha256(np.ascontiguousarray(rows, dtype=np.float32).tobytes()).hexdigest()[:16]
    return f"ivf-{digest}-{nlist}-{seed}.faiss"


def _train_ivf(faiss: Any, rows: np.ndarray, nlist: int, seed: int, threads: int | None) -> Any:
    v, d = rows.shape
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = seed
    sample = rows
    if v > 64 * nlist:  # enough for k-means (FAISS warns below 39 per centroid); the rest is added
        sample = rows[np.random.default_rng(seed).choice(v, 64 * nlist, replace=False)]
    with faiss_threads(threads):
        index.train(sample)
        index.add(rows)
    return index


def _load_ivf(faiss: Any, path: Path) -> Any:
    """The saved IVF structure, or None when it cannot be read (a truncated or damaged cache file
    is rebuilt and saved again, with a warning: it is derived from the table, never recorded)."""
    try:
        return faiss.deserialize_index(np.fromfile(path, dtype=np.uint8))
    except (RuntimeError, OSError, ValueError) as err:
        log.warning("%s: unreadable IVF normalizer cache (%s); rebuilding it", path, type(err).__name__)
        return None


def _save_ivf(faiss: Any, index: Any, path: Path) -> None:
    """Save beside the index (atomically); a read-only index dir just rebuilds it next time."""
    from npdecode.atomic import atomic_file

    try:
        with atomic_file(path, "wb") as fh:
            fh.write(faiss.serialize_index(index).tobytes())
    except OSError as err:
        log.info("could not save the IVF normalizer to %s (%s); it is rebuilt at each search", path, err)


@contextlib.contextmanager
def faiss_threads(n: int | None) -> Iterator[None]:
    """FAISS's OpenMP thread count set to ``n`` for the block (None: unchanged), then restored:
    a process-wide setting, so a library call must not leave it changed."""
    if not n:
        yield
        return
    import faiss

    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(previous)


def parse_normalizer(spec: str) -> dict[str, int] | None:
    """``"exact"`` -> None; ``"ivf[:NPROBE[:TOPK[:NLIST]]]"`` -> :class:`IvfNormalizer` options."""
    name, *numbers = spec.split(":")
    if name == "exact" and not numbers:
        return None
    keys = ("nprobe", "topk", "nlist")
    if name != "ivf" or len(numbers) > len(keys) or not all(n.isdigit() and int(n) > 0 for n in numbers):
        raise NpdecodeError(
            f"normalizer {spec!r}: use 'exact' or 'ivf[:NPROBE[:TOPK[:NLIST]]]' "
            "with positive integers, e.g. ivf:32:1024"
        )
    return {key: int(n) for key, n in zip(keys, numbers)}
