"""Sparsification of task vectors: magnitude (TIES), random (DARE), outliers (Breadcrumbs),
rank-magnitude sampling (DELLA).

Each function takes one task vector ``tv`` (any shape, the computation dtype) and returns a
tensor of the same shape and dtype. ``density >= 1`` leaves ``tv`` unchanged, as in MergeKit.

Random draws: one ``torch.rand(tv.shape)`` in float32 per call, from ``generator`` (the global
generator when None), and an entry is kept where ``u < p``. The draw does not depend on the
computation dtype, so a seeded merge keeps the same entries in float32 and float64.
"""

from __future__ import annotations

import torch

from npdecode.errors import NpdecodeError
from npdecode.merge.methods._inputs import accumulation_dtype


def _uniform(tv: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(tv.shape, generator=generator, dtype=torch.float32, device=tv.device)


def _rescale_l1(tv: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """``kept`` scaled so that its L1 norm equals ``tv``'s (no-op when either is ~0)."""
    before = tv.abs().sum().item()
    after = kept.abs().sum().item()
    if before >= 1e-8 and after >= 1e-8:
        kept = kept * (before / after)
    return kept


def _mask_from_flat(tv: torch.Tensor, flat_idx: torch.Tensor) -> torch.Tensor:
    mask = torch.zeros(tv.numel(), dtype=torch.bool, device=tv.device)
    mask[flat_idx] = True
    return mask.view(tv.shape)


def magnitude(tv: torch.Tensor, density: float, rescale: bool = False) -> torch.Tensor:
    """Keep the ``int(density * numel)`` largest-magnitude entries (TIES trim); zero the rest.

    ``rescale`` scales the kept entries to preserve the task vector's L1 norm.
    """
    if density >= 1:
        return tv
    k = int(density * tv.numel())
    if k <= 0:
        return torch.zeros_like(tv)
    top = torch.topk(tv.abs().reshape(-1), k, largest=True, sorted=False).indices
    kept = tv * _mask_from_flat(tv, top)
    return _rescale_l1(tv, kept) if rescale else kept


def bernoulli(
    tv: torch.Tensor, density: float, rescale: bool, generator: torch.Generator | None
) -> torch.Tensor:
    """DARE: keep each entry with probability ``density``; ``rescale`` divides kept ones by it."""
    if density >= 1:
        return tv
    if density <= 0:
        return torch.zeros_like(tv)
    keep = _uniform(tv, generator) < density
    kept = tv * keep
    return kept / density if rescale else kept


def magnitude_outliers(tv: torch.Tensor, density: float, gamma: float, rescale: bool = False) -> torch.Tensor:
    """Breadcrumbs: drop the ``gamma`` fraction of largest magnitudes, then the smallest ones,
    so that ``int(density * numel)`` entries remain.

    When ``gamma >= 1 - density`` fewer large entries are dropped (``1 - density`` of them) and
    no small ones, so the kept fraction is always ``density``.
    """
    if density >= 1:
        return tv
    n = tv.numel()
    n_keep = int(density * n)
    n_top = int(gamma * n)
    n_bottom = n - n_keep - n_top
    if n_bottom < 0:
        n_top += n_bottom
        n_bottom = 0
    # two partial selections instead of a full sort (several times faster on large tensors)
    magnitudes = tv.abs().reshape(-1)
    keep = torch.ones(n, dtype=torch.bool, device=tv.device)
    if n_top > 0:
        keep[torch.topk(magnitudes, n_top, largest=True, sorted=False).indices] = False
    if n_bottom > 0:
        keep[torch.topk(magnitudes, n_bottom, largest=False, sorted=False).indices] = False
    kept = tv * keep.view(tv.shape)
    return _rescale_l1(tv, kept) if rescale else kept


def rank_magnitude(
    tv: torch.Tensor, density: float, epsilon: float, rescale: bool, generator: torch.Generator | None
) -> torch.Tensor:
    """DELLA MagPrune: per row, keep probabilities rise linearly with magnitude rank from
    ``density - epsilon`` (smallest) to ``density + epsilon`` (largest); kept entries are divided
    by their probability when ``rescale``.

    Rows are the slices along the last dimension (a 1-D tensor is one row; higher-rank tensors
    are viewed as ``(-1, shape[-1])``). A one-element row gets probability ``density``.
    """
    if density >= 1:
        return tv
    if density - epsilon <= 0 or density + epsilon >= 1:
        raise NpdecodeError(
            f"della: density ± epsilon must lie strictly inside (0, 1); got density={density}, "
            f"epsilon={epsilon}: lower epsilon"
        )
    rows = tv.reshape(-1, tv.shape[-1]) if tv.dim() > 0 else tv.reshape(1, 1)
    width = rows.shape[-1]
    # rank 0 = smallest magnitude in its row; double argsort turns an order into ranks.
    acc = accumulation_dtype(rows)
    ranks = torch.argsort(torch.argsort(rows.abs(), dim=-1, stable=True), dim=-1).to(acc)
    unit = ranks / (width - 1) if width > 1 else torch.full_like(ranks, 0.5)
    prob = (density - epsilon) + unit * (2 * epsilon)
    keep = _uniform(rows, generator) < prob
    kept = rows * keep
    if rescale:
        kept = kept / prob.to(rows.dtype)
    return kept.reshape(tv.shape)
