"""Sparsification of task vectors: magnitude (TIES), random (DARE), outliers (Breadcrumbs),
rank-magnitude sampling (DELLA).

Each function takes one task vector ``tv`` (any shape, the computation dtype) and returns a
tensor of the same shape and dtype. ``density >= 1`` leaves ``tv`` unchanged, as in MergeKit.

Random draws: one ``torch.rand(tv.shape)`` in float32 per call, from ``generator`` (the global
generator when None; DARE draws it block by block on CPU, the same stream), and an entry is
kept where ``u < p``. The draw does not depend on the
computation dtype, so a seeded merge keeps the same entries in float32 and float64.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from npdecode.errors import NpdecodeError
from npdecode.merge.methods._inputs import accumulation_dtype

# Elementwise passes run over blocks of this many entries, so that their temporaries (masks,
# magnitudes, random draws) stay small next to the task vector itself.
BLOCK = 1 << 20

# Bit patterns of non-negative floats order like the floats; this integer view of each dtype.
_BITS = {
    torch.float64: torch.int64,
    torch.float32: torch.int32,
    torch.bfloat16: torch.int16,
    torch.float16: torch.int16,
}


def _blocks(n: int):
    for start in range(0, n, BLOCK):
        yield start, min(start + BLOCK, n)


def _uniform(tv: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(tv.shape, generator=generator, dtype=torch.float32, device=tv.device)


def _rescale_l1(tv: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """``kept`` scaled so that its L1 norm equals ``tv``'s (no-op when either is ~0)."""
    before = tv.abs().sum().item()
    after = kept.abs().sum().item()
    if before >= 1e-8 and after >= 1e-8:
        kept = kept * (before / after)
    return kept


def _magnitude_bits(block: torch.Tensor) -> torch.Tensor:
    """``|block|`` as integers that order like the magnitudes (int32 for 16-bit floats)."""
    bits = block.abs().view(_BITS[block.dtype])
    return bits.to(torch.int32) if bits.dtype == torch.int16 else bits


def _kth_largest_bits(flat: torch.Tensor, k: int) -> tuple[int, int, int]:
    """Radix select of the ``k``-th largest magnitude of ``flat`` (1-D, ``1 <= k <= numel``).

    Returns ``(cut, n_above, n_equal)``: the cut's bit pattern (see ``_magnitude_bits``), how
    many magnitudes are above it and how many equal it. One histogram pass per 16-bit digit
    (one for 16-bit floats, two for float32, four for float64), block by block: no index list
    and no full-size temporary, unlike ``topk``/``kthvalue``.
    """
    width = 16 if flat.dtype in (torch.bfloat16, torch.float16) else torch.finfo(flat.dtype).bits
    prefix, n_above, n_equal = 0, 0, flat.numel()
    for shift in range(width - 16, -1, -16):
        hist = torch.zeros(1 << 16, dtype=torch.int64, device=flat.device)
        for start, stop in _blocks(flat.numel()):
            bits = _magnitude_bits(flat[start:stop])
            if shift + 16 < width:  # only entries whose higher digits equal the prefix so far
                bits = bits[(bits >> (shift + 16)) == (prefix >> (shift + 16))]
            hist += torch.bincount(((bits >> shift) & 0xFFFF).to(torch.int64), minlength=1 << 16)
        # the digit where the count from the top first reaches the remaining k - n_above
        from_top = hist.flip(0).cumsum(0)
        pos = int(torch.searchsorted(from_top, k - n_above))
        digit = (1 << 16) - 1 - pos
        n_above += int(from_top[pos - 1]) if pos > 0 else 0
        n_equal = int(hist[digit])
        prefix |= digit << shift
    return prefix, n_above, n_equal


class TrimPlan(NamedTuple):
    """Which entries a magnitude trim keeps: those with ``|x| >= cut`` (``cut`` as bits, see
    ``_magnitude_bits``) except the flat indices in ``surplus`` (ties MergeKit's sort drops)."""

    cut: int
    surplus: torch.Tensor | None


def trim_plan(tv: torch.Tensor, density: float, consume: bool = False) -> TrimPlan | None:
    """The ``TrimPlan`` keeping the ``int(density * numel)`` largest magnitudes of ``tv``
    (contiguous float); None when ``density >= 1``. ``consume`` lets it overwrite ``tv``.

    Ties at the cut are broken as MergeKit's ``argsort(|tv|, descending=True)[:k]`` breaks them
    (its order among equal magnitudes is not the index order): when more entries equal the
    cut than fit, the same sort runs (float32 magnitudes on CPU, native ones elsewhere; float64
    stays float64 where MergeKit rounds to float32) and the ties it ranks after ``k`` are
    dropped. That sort needs every entry (its tie order depends on all of them) and an int64
    index list; without such a tie the radix select alone decides, with block-sized
    temporaries.
    """
    if density >= 1:
        return None
    if tv.dtype not in _BITS:
        raise NpdecodeError(f"magnitude trimming needs a floating-point tensor, got {tv.dtype}")
    k = int(density * tv.numel())
    if k <= 0:
        return TrimPlan(cut=torch.iinfo(_BITS[tv.dtype]).max, surplus=None)  # keeps nothing
    flat = tv.reshape(-1)
    cut, n_above, n_equal = _kth_largest_bits(flat, k)
    if n_above + n_equal <= k or cut == 0:  # no tie straddles the cut (dropping zeros is moot)
        return TrimPlan(cut=cut, surplus=None)
    magnitudes = flat.abs_() if consume else flat.abs()
    if magnitudes.device.type == "cpu":
        if magnitudes.dtype != torch.float64:
            magnitudes = magnitudes.float()  # MergeKit sorts float32 magnitudes on CPU
        if not bool(torch.isnan(magnitudes).any()):
            # the same comparisons on the bit patterns (order-preserving for non-negative,
            # non-NaN floats) make the CPU sort take the same steps, ~25% faster
            magnitudes = magnitudes.view(_BITS[magnitudes.dtype])
    order = torch.empty(magnitudes.shape, dtype=torch.int64, device=magnitudes.device)
    # sorting the magnitudes in place (same order as argsort) saves the sorted-values copy
    torch.sort(magnitudes, descending=True, out=(magnitudes, order))
    del magnitudes
    surplus = order[k : n_above + n_equal].clone()
    del order
    return TrimPlan(cut=cut, surplus=surplus)


def magnitude(
    tv: torch.Tensor,
    density: float,
    rescale: bool = False,
    inplace: bool = False,
    plan: TrimPlan | None = None,
) -> torch.Tensor:
    """Keep the ``int(density * numel)`` largest-magnitude entries (TIES trim); zero the rest.

    Ties at the cut are broken as MergeKit breaks them (see ``trim_plan``; ``plan``, when
    given, is ``trim_plan`` of the same values). ``rescale`` scales the kept entries to
    preserve the task vector's L1 norm; ``inplace`` trims ``tv`` itself (no full-size
    temporary).
    """
    if density >= 1:
        return tv
    if inplace and not tv.is_contiguous():
        return tv.copy_(magnitude(tv, density, rescale, plan=plan))
    out = tv if inplace else tv.clone(memory_format=torch.contiguous_format)
    if int(density * out.numel()) <= 0:
        return out.zero_()
    if plan is None:
        plan = trim_plan(out, density)
    before = out.abs().sum().item() if rescale else 0.0
    flat = out.view(-1)
    for start, stop in _blocks(flat.numel()):
        block = flat[start:stop]
        block.masked_fill_(_magnitude_bits(block) < plan.cut, 0)
    if plan.surplus is not None:
        flat[plan.surplus] = 0
    if rescale:
        after = out.abs().sum().item()
        if before >= 1e-8 and after >= 1e-8:
            out.mul_(before / after)
    return out


def bernoulli(
    tv: torch.Tensor,
    density: float,
    rescale: bool,
    generator: torch.Generator | None,
    inplace: bool = False,
) -> torch.Tensor:
    """DARE: keep each entry with probability ``density``; ``rescale`` divides kept ones by it.

    On CPU the draws are made block by block (the CPU generator gives the same stream as one
    ``torch.rand(tv.shape)``), so the only temporaries are block-sized; ``inplace`` prunes
    ``tv`` itself.
    """
    if density >= 1:
        return tv
    if inplace and not tv.is_contiguous():
        return tv.copy_(bernoulli(tv, density, rescale, generator))
    out = tv if inplace else tv.clone(memory_format=torch.contiguous_format)
    if density <= 0:
        return out.zero_()
    if out.device.type != "cpu":  # block-wise draws would change the stream of other generators
        out.masked_fill_(_uniform(out, generator) >= density, 0)
        return out.div_(density) if rescale else out
    flat = out.view(-1)
    for start, stop in _blocks(flat.numel()):
        block = flat[start:stop]
        u = torch.rand(stop - start, generator=generator, dtype=torch.float32, device=out.device)
        block.masked_fill_(u >= density, 0)
        if rescale:
            block.div_(density)
    return out


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
