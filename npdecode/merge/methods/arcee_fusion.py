"""Arcee Fusion: add to the base only the most salient part of the other model's changes.

Importance of each entry: ``|other - base| * KL(p || q)``, where ``p = softmax(other) + 1e-8``
and ``q = softmax(base) + 1e-8`` along the last dim (the KL of that row). The entries whose
importance reaches ``median + 1.5 * IQR`` (lower median, as ``torch.median``; quartiles at the
sorted index ``floor(q (n - 1))``, without interpolation, as MergeKit 0.1.5 computes them for
tensors up to 1M entries; above that MergeKit samples at random, we stay exact) take the
other model's value; every other entry keeps the base's.
"""

from __future__ import annotations

import torch

from npdecode.merge.methods import _mixing
from npdecode.merge.methods._inputs import (
    accumulation_dtype,
    check_shapes,
    require_base,
    require_count,
    split_base,
)
from npdecode.merge.methods._select import kth_smallest
from npdecode.merge.registry import MergeMethod, register


def _quantile(flat: torch.Tensor, q: float) -> torch.Tensor:
    """The sorted value at index ``floor(q (n - 1))`` of a 1-D tensor (any size, no full sort)."""
    return torch.kthvalue(flat, int(q * (flat.numel() - 1)) + 1).values


def importance(other: torch.Tensor, base: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``|other - base|`` times the row KL divergence of their softmaxes (shape of the inputs)."""
    if other.dim() == 0:
        other, base = other.reshape(1), base.reshape(1)
    p = torch.softmax(other, dim=-1) + eps
    q = torch.softmax(base, dim=-1) + eps
    kl = (p * torch.log(p / q)).sum(dim=-1, keepdim=True)
    return (other - base).abs() * kl


def merge_arcee_fusion(tensors, base, model_params, params, generator) -> torch.Tensor:
    """The base with the other model's entries where their importance is an upper outlier.

    The importance is computed in chunks of whole rows into one full-size tensor (the only
    one besides the output); the median and quartiles are exact radix selects over it, block by
    block (``torch.median``/``kthvalue`` would copy it and add an int64 index array)."""
    base = require_base("arcee_fusion", base)
    others, _ = split_base(tensors, base, model_params)
    check_shapes("arcee_fusion", others, base)
    if not others:
        return base.clone()
    require_count("arcee_fusion", others, 1, "exactly two models: the base_model and one other")
    acc = accumulation_dtype(base)
    other = others[0]
    width = base.shape[-1] if base.dim() >= 2 else max(base.numel(), 1)
    rows_o, rows_b = other.reshape(-1, width), base.reshape(-1, width)
    scores = torch.empty(rows_b.shape, dtype=acc, device=base.device)
    step = max(1, _mixing.block_size(base.device) // width)
    for r0 in range(0, rows_b.shape[0], step):
        part = slice(r0, r0 + step)
        scores[part] = importance(rows_o[part].to(acc), rows_b[part].to(acc))
    flat = scores.view(-1)
    if bool(torch.isnan(flat).any()):  # NaN ranks as torch's order statistics rank it
        median = torch.median(flat)
        iqr = _quantile(flat, 0.75) - _quantile(flat, 0.25)
    else:
        n = flat.numel()
        median = kth_smallest(flat, (n - 1) // 2 + 1)
        iqr = kth_smallest(flat, int(0.75 * (n - 1)) + 1) - kth_smallest(flat, int(0.25 * (n - 1)) + 1)
    threshold = median + 1.5 * iqr
    out = torch.empty(rows_b.shape, dtype=base.dtype, device=base.device)
    for r0 in range(0, rows_b.shape[0], step):
        part = slice(r0, r0 + step)
        torch.where(scores[part] >= threshold, rows_o[part], rows_b[part], out=out[part])
    return out.reshape(base.shape)


METHOD = register(
    MergeMethod(
        name="arcee_fusion",
        func=merge_arcee_fusion,
        requires_base=True,
        module=__name__,
        description="take the other model's changes where their KL-weighted importance is an outlier",
    )
)
