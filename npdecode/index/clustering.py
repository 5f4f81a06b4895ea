"""Step 3 of Np Decoding: per-token k-means over raw CE vectors.

Raw CE vectors are grouped by token id. A group with more than ``k`` distinct vectors becomes
``k`` centroids (k-means, seeded); a smaller group keeps its vectors as rows. Most groups are
small (a few dozen occurrences of a token): they run a plain numpy Lloyd's k-means, because a
FAISS call costs milliseconds of fixed overhead (thread pool, checks) that would dominate a
vocabulary of tiny groups. Groups of at least ``FAISS_MIN_POINTS`` run FAISS k-means
(a torch Lloyd's k-means where faiss is absent). Every occurrence maps to its nearest row of its own
token (L2, the k-means objective). ``k = 0`` turns compression off: one row per occurrence.

A token with more than ``sample`` occurrences computes its centroids from a seeded sample of
``sample`` of them (:func:`sample_ordinals`: which ones depends only on the seed, the token id
and its occurrence count, never on how the occurrences were read), and every occurrence still
goes to its nearest centroid. A token that fits the sample is clustered exactly as without one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Clustered:
    """Rows made from raw CE vectors, and where each occurrence went.

    rows: (R, d) float32; row_tokens: (R,) int64 token id of each row;
    assignment: (N,) int64 row (0-based within ``rows``) of each input occurrence.
    """

    rows: np.ndarray
    row_tokens: np.ndarray
    assignment: np.ndarray


def cluster_by_token(
    vectors: np.ndarray,
    tokens: np.ndarray,
    k: int,
    *,
    iterations: int = 20,
    seed: int = 0,
    use_faiss: bool | None = None,
    faiss_min_points: int | None = None,
    sample: int | None = None,
) -> Clustered:
    """Compress ``vectors`` (N, d) float32 with token ids ``tokens`` (N,) into per-token rows.

    Groups are visited in increasing token id and each keeps its occurrences' order, so the
    result depends only on the inputs and the seed. ``use_faiss=None`` uses faiss if importable
    for groups of at least ``faiss_min_points`` (default ``FAISS_MIN_POINTS``) occurrences;
    ``sample``: a token with more occurrences is clustered on :func:`sample_ordinals` of them.
    """
    floor = FAISS_MIN_POINTS if faiss_min_points is None else faiss_min_points
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    tokens = np.asarray(tokens, dtype=np.int64)
    n, dim = vectors.shape
    assignment = np.empty(n, dtype=np.int64)
    if k == 0:
        assignment[:] = np.arange(n)
        return Clustered(vectors.copy(), tokens.copy(), assignment)
    kmeans = _pick_kmeans(use_faiss)
    order = np.argsort(tokens, kind="stable")
    bounds = np.flatnonzero(np.diff(tokens[order])) + 1
    rows, row_tokens, start_row = [], [], 0
    for members in np.split(order, bounds) if n else []:
        group = vectors[members]
        token = int(tokens[members[0]])
        fit = (
            group if sample is None or len(group) <= sample else group[sample_ordinals(len(group), sample, seed, token)]
        )
        centroids = token_centroids(fit, k, iterations, seed, kmeans, floor)
        assignment[members] = start_row + nearest_rows(group, centroids)
        rows.append(centroids)
        row_tokens.append(np.full(len(centroids), tokens[members[0]], dtype=np.int64))
        start_row += len(centroids)
    if not rows:
        return Clustered(np.zeros((0, dim), np.float32), np.zeros(0, np.int64), assignment)
    return Clustered(np.concatenate(rows).astype(np.float32), np.concatenate(row_tokens), assignment)


FAISS_MIN_POINTS = 4096


def token_centroids(points: np.ndarray, k: int, iterations: int, seed: int, kmeans=None, floor: int | None = None):
    """One token's rows from (a sample of) its occurrences ``points`` (n, d): the distinct
    vectors when there are at most ``k``, else ``k`` k-means centroids (numpy below ``floor``
    points, ``kmeans`` — FAISS where importable — from there)."""
    kmeans = kmeans or _pick_kmeans(None)
    floor = FAISS_MIN_POINTS if floor is None else floor
    distinct = _distinct_rows(points, k)
    if distinct is not None:
        return distinct
    if len(points) < floor:
        return numpy_kmeans(points, k, iterations, seed)
    return kmeans(points, k, iterations, seed)


def sample_ordinals(count: int, sample: int, seed: int, token: int) -> np.ndarray:
    """Which of a token's ``count`` occurrences (0-based, in corpus order) its k-means sees:
    all of them when ``count <= sample``, else ``sample`` drawn without replacement by a
    generator seeded with ``(seed, token)``, in increasing order. The same occurrences whatever
    the order, the machine or the process that reads them."""
    if count <= sample:
        return np.arange(count, dtype=np.int64)
    rng = np.random.default_rng([seed & 0xFFFFFFFF, token])
    return np.sort(rng.choice(count, size=sample, replace=False)).astype(np.int64)


def _distinct_rows(group: np.ndarray, limit: int) -> np.ndarray | None:
    """The distinct rows of ``group`` in first-seen order, or None when there are more than
    ``limit`` (stops early: the common case is a group with many distinct vectors)."""
    seen: dict[bytes, int] = {}
    for i, row in enumerate(group):
        seen.setdefault(row.tobytes(), i)
        if len(seen) > limit:
            return None
    return group[list(seen.values())]


def nearest_rows(points: np.ndarray, rows: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """Index of the L2-nearest row for each point: (n, d), (r, d) -> (n,) int64.

    Computed in float64 so ties between near-identical centroids break the same way everywhere.
    """
    c = np.asarray(rows, dtype=np.float64)
    c_sq = (c * c).sum(1)
    out = np.empty(len(points), dtype=np.int64)
    for lo in range(0, len(points), chunk):
        p = np.asarray(points[lo : lo + chunk], dtype=np.float64)
        # ||p - c||^2 = ||p||^2 - 2 p.c + ||c||^2; the first term does not change the argmin
        out[lo : lo + len(p)] = (c_sq[None, :] - 2.0 * (p @ c.T)).argmin(axis=1)
    return out


def numpy_kmeans(points: np.ndarray, k: int, iterations: int, seed: int) -> np.ndarray:
    """Lloyd's k-means with k-means++ seeding in numpy (float64): centroids (k, d) float32.

    For small groups: no thread pools, microseconds per iteration.
    """
    rng = np.random.default_rng(seed)
    x = np.asarray(points, dtype=np.float64)
    x_sq = (x * x).sum(1)
    centroids = [x[rng.integers(len(x))]]
    d2 = np.maximum(x_sq - 2 * x @ centroids[0] + centroids[0] @ centroids[0], 0)
    for _ in range(1, k):
        total = d2.sum()
        pick = rng.choice(len(x), p=d2 / total) if total > 0 else rng.integers(len(x))
        centroids.append(x[pick])
        d2 = np.minimum(d2, np.maximum(x_sq - 2 * x @ x[pick] + x[pick] @ x[pick], 0))
    c = np.stack(centroids)
    for _ in range(iterations):
        labels = ((c * c).sum(1)[None, :] - 2.0 * (x @ c.T)).argmin(axis=1)
        members = labels[None, :] == np.arange(k)[:, None]  # (k, n): one matmul, not np.add.at
        counts = members.sum(1)
        sums = members.astype(np.float64) @ x
        moved = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], c)
        if np.array_equal(moved, c):
            break  # converged: a Lloyd fixed point
        c = moved
    return c.astype(np.float32)


def _pick_kmeans(use_faiss: bool | None):
    if use_faiss is False:
        return torch_kmeans
    try:
        import faiss  # noqa: F401
    except ImportError:
        if use_faiss:
            raise
        return torch_kmeans
    return faiss_kmeans


def faiss_kmeans(points: np.ndarray, k: int, iterations: int, seed: int) -> np.ndarray:
    """FAISS k-means centroids (k, d) float32 of ``points`` (n > k, d)."""
    import faiss

    km = faiss.Kmeans(points.shape[1], k, niter=iterations, seed=seed, verbose=False)
    # Small groups are the rule here (a few dozen occurrences per token): silence the
    # "too few points" warning, the centroids are still the Lloyd fixed point.
    km.cp.min_points_per_centroid = 1
    km.train(np.ascontiguousarray(points, dtype=np.float32))
    return np.asarray(km.centroids, dtype=np.float32)


def torch_kmeans(points: np.ndarray, k: int, iterations: int, seed: int) -> np.ndarray:
    """Lloyd's k-means with k-means++ seeding (torch, CPU): centroids (k, d) float32."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(np.asarray(points, dtype=np.float32))
    first = int(torch.randint(len(x), (1,), generator=gen))
    centroids = [x[first]]
    for _ in range(1, k):
        d2 = torch.cdist(x, torch.stack(centroids)).min(dim=1).values.pow(2)
        probs = d2 / d2.sum() if d2.sum() > 0 else torch.full_like(d2, 1 / len(d2))
        centroids.append(x[int(torch.multinomial(probs, 1, generator=gen))])
    c = torch.stack(centroids)
    for _ in range(iterations):
        labels = torch.cdist(x, c).argmin(dim=1)
        sums = torch.zeros_like(c).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=k).unsqueeze(1).to(x.dtype)
        # An emptied centroid keeps its place instead of collapsing to the origin.
        c = torch.where(counts > 0, sums / counts.clamp(min=1), c)
    return c.numpy().astype(np.float32)


def assign_to_existing(vectors: np.ndarray, tokens: np.ndarray, rows: np.ndarray, row_tokens: np.ndarray) -> np.ndarray:
    """Nearest existing row of the same token for each occurrence (incremental indexing).

    vectors (N, d), tokens (N,), rows (R, d), row_tokens (R,) -> (N,) int64 row ids into
    ``rows``, -1 for occurrences whose token has no row yet.
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    out = np.full(len(tokens), -1, dtype=np.int64)
    by_token = np.argsort(row_tokens, kind="stable")
    sorted_tokens = np.asarray(row_tokens)[by_token]
    for token in np.unique(tokens):
        lo, hi = np.searchsorted(sorted_tokens, token), np.searchsorted(sorted_tokens, token, side="right")
        if lo == hi:
            continue
        members = np.flatnonzero(tokens == token)
        candidates = by_token[lo:hi]
        out[members] = candidates[nearest_rows(vectors[members], rows[candidates])]
    return out
