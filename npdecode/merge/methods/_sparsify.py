"""Sparsification of task vectors: magnitude (TIES), random (DARE), outliers (Breadcrumbs),
rank-magnitude sampling (DELLA).

Each function takes one task vector ``tv`` (any shape, the computation dtype) and returns a
tensor of the same shape and dtype. ``density >= 1`` leaves ``tv`` unchanged, as in MergeKit.

Random draws are float32 uniforms (one per entry), and an entry is kept where ``u < p``. DELLA
draws one ``torch.rand(tv.shape)`` per call from ``generator`` (the global generator when None);
DARE draws from one generator per model (``model_generators``), block by block (see
``drop_random``). The draws do not depend on the computation dtype, so a seeded merge keeps
the same entries in float32 and float64.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
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
        # the 65536-bin histogram lives in numpy: torch runs ops of that size on its thread
        # pool, whose wake-ups cost ~10 ms each on a loaded machine (tiny models took seconds)
        hist = np.zeros(1 << 16, dtype=np.int64)
        for start, stop in _blocks(flat.numel()):
            bits = _magnitude_bits(flat[start:stop])
            if shift + 16 < width:  # only entries whose higher digits equal the prefix so far
                bits = bits[(bits >> (shift + 16)) == (prefix >> (shift + 16))]
            digits = ((bits >> shift) & 0xFFFF).cpu().numpy()
            hist += np.bincount(digits, minlength=1 << 16)
        # the digit where the count from the top first reaches the remaining k - n_above
        from_top = np.cumsum(hist[::-1])
        pos = int(np.searchsorted(from_top, k - n_above))
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


def model_generators(generator: torch.Generator | None, count: int, device: torch.device) -> list[torch.Generator]:
    """One generator per model on ``device``, seeded by ``count`` draws from ``generator`` (the
    global generator when None). A model's draws then do not depend on the other models', so
    task vectors can be pruned block by block, interleaved, with the stream of one
    ``torch.rand(shape)`` per model."""
    seeds = torch.randint(0, 2**62, (count,), generator=generator,
                          device=generator.device if generator is not None else "cpu")  # fmt: skip
    out = []
    for seed in seeds.tolist():
        g = torch.Generator(device=device)
        g.manual_seed(seed)
        out.append(g)
    return out


def drop_random(d: torch.Tensor, u: torch.Tensor, density: float, rescale: bool) -> torch.Tensor:
    """DARE on one block, in place: ``d`` kept where ``u < density`` (``u``: float32 uniform draws
    of ``d``'s shape, overwritten), zero elsewhere; kept entries divided by ``density`` when
    ``rescale``. ``0 < density < 1``.

    Float arithmetic instead of ``masked_fill``: ``sign(u - density)`` is -1 exactly where
    ``u < density`` (a float difference is 0 only for equal operands), and several times
    cheaper on CPU than a bool mask.
    """
    u.sub_(density).sign_().clamp_max_(0)  # -1 kept, 0 dropped
    d.mul_(u)  # -d where kept: the signs are undone below, exactly
    return d.div_(-density) if rescale else d.neg_()


class BandPlan(NamedTuple):
    """Which entries a Breadcrumbs trim keeps: those with ``lo <= |x| <= hi`` (bit patterns, see
    ``_magnitude_bits``) except the flat indices in ``surplus`` (sorted; ties at either end that
    MergeKit's sort drops). ``lo > hi`` keeps nothing."""

    lo: int
    hi: int
    surplus: torch.Tensor | None


def outlier_plan(tv: torch.Tensor, density: float, gamma: float, consume: bool = False) -> BandPlan | None:
    """The ``BandPlan`` of Breadcrumbs on ``tv`` (contiguous float); None when ``density >= 1``.

    As MergeKit: with ``n_top = int(gamma n)``, ``k = int(density n)`` and ``n_bot = max(0, n -
    k - n_top)``, keep positions ``[n_bot, n_bot + k)`` of the ascending sort of ``|tv|`` (float32
    on CPU; float64 kept as is). Two radix selects find the band's ends; only when ties straddle
    an end does the sort itself run, to break them in its order (``consume`` lets it overwrite
    ``tv``). Memory: block-sized temporaries, or the sort's (values and int64 indices).
    """
    if density >= 1:
        return None
    if tv.dtype not in _BITS:
        raise NpdecodeError(f"magnitude trimming needs a floating-point tensor, got {tv.dtype}")
    n = tv.numel()
    k = int(density * n)
    n_bot = max(0, n - k - int(gamma * n))
    if k <= 0:
        return BandPlan(lo=1, hi=0, surplus=None)
    top = n - n_bot - k  # descending rank (0-based) of the largest kept magnitude
    flat = tv.reshape(-1)
    hi, hi_above, _ = _kth_largest_bits(flat, top + 1)
    lo, lo_above, lo_equal = _kth_largest_bits(flat, top + k)
    if hi_above == top and lo_above + lo_equal == top + k:  # no tie straddles either end
        return BandPlan(lo=lo, hi=hi, surplus=None)
    magnitudes = flat.abs_() if consume else flat.abs()
    if magnitudes.device.type == "cpu" and magnitudes.dtype != torch.float64:
        magnitudes = magnitudes.float()
    # the floats themselves (not their bit patterns, as in trim_plan): an ascending sort of
    # integers takes another algorithm (radix) in torch, with another order among ties
    order = torch.empty(magnitudes.shape, dtype=torch.int64, device=magnitudes.device)
    torch.sort(magnitudes, out=(magnitudes, order))  # ascending, as MergeKit
    del magnitudes
    # the band occupies ascending positions [n - lo_above - lo_equal, n - hi_above); the sort
    # keeps [n_bot, n_bot + k) of it and drops the rest
    surplus = torch.cat([order[n - lo_above - lo_equal : n_bot], order[n_bot + k : n - hi_above]])
    del order
    return BandPlan(lo=lo, hi=hi, surplus=torch.sort(surplus).values)


def apply_band(block: torch.Tensor, plan: BandPlan, start: int) -> torch.Tensor:
    """Zero, in place, the entries of ``block`` (flat entries ``[start, start + m)`` of the task
    vector the plan was made for) that ``plan`` does not keep."""
    bits = _magnitude_bits(block)
    block.mul_((bits >= plan.lo) & (bits <= plan.hi))
    if plan.surplus is not None:
        lo, hi = torch.searchsorted(
            plan.surplus, torch.tensor([start, start + block.numel()], device=block.device)
        ).tolist()
        if hi > lo:
            block[plan.surplus[lo:hi] - start] = 0
    return block


def magnitude_outliers(tv: torch.Tensor, density: float, gamma: float, rescale: bool = False) -> torch.Tensor:
    """Breadcrumbs: drop the ``gamma`` fraction of largest magnitudes, then the smallest ones,
    so that ``int(density * numel)`` entries remain (see ``outlier_plan``; ties broken as
    MergeKit's sort breaks them). When ``gamma >= 1 - density`` fewer large entries are dropped
    and no small ones, so the kept fraction is always ``density``. ``rescale`` preserves the L1
    norm."""
    if density >= 1:
        return tv
    kept = tv.clone(memory_format=torch.contiguous_format)
    plan = outlier_plan(kept.clone(), density, gamma, consume=True)
    apply_band(kept.view(-1), plan, 0)
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
    out = torch.empty_like(rows)
    acc = accumulation_dtype(rows)
    # whole rows at a time, about BLOCK entries: the argsorts' int64 temporaries stay small.
    # The draws are made chunk by chunk in row order: on CPU the same stream as one
    # ``torch.rand(rows.shape)``.
    step = max(1, BLOCK // width)
    for r0 in range(0, rows.shape[0], step):
        part = rows[r0 : r0 + step]
        # rank 0 = smallest magnitude in its row; double argsort turns an order into ranks.
        ranks = torch.argsort(torch.argsort(part.abs(), dim=-1, stable=True), dim=-1).to(acc)
        unit = ranks / (width - 1) if width > 1 else torch.full_like(ranks, 0.5)
        prob = (density - epsilon) + unit * (2 * epsilon)
        keep = _uniform(part, generator) < prob
        kept = torch.mul(part, keep, out=out[r0 : r0 + step])
        if rescale:
            kept.div_(prob.to(rows.dtype))
    return out.reshape(tv.shape)
