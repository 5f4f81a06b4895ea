"""SCE (Select, Calculate, Erase; FuseChat, arXiv:2408.07990) over task vectors ``d_i = x_i - base``.

1. Select: when ``select_topk < 1``, keep only the ``int(select_topk * #nonzero-variance)``
   positions with the largest variance across the ``d_i`` (population variance); zero the rest.
2. Calculate: matrix-level weights ``c_i = mean(d_i**2) / sum_j mean(d_j**2)`` (equal weights
   when that sum is ~0).
3. Erase: TIES sign consensus (majority sign of ``sum_i d_i``).
``out = base + sum_i c_i m_i d_i / max(sum_i c_i m_i, 1e-6)``.
"""

from __future__ import annotations

import torch

from npdecode.merge.methods._inputs import check_shapes, require_base, split_base
from npdecode.merge.methods._task_arithmetic import sign_consensus
from npdecode.merge.registry import MergeMethod, register


def variance_mask(deltas: torch.Tensor, topk: float) -> torch.Tensor:
    """Bool mask ``(*shape)`` of the highest-variance positions of ``deltas`` ``(n, *shape)``."""
    shape = deltas.shape[1:]
    if topk >= 1:
        return torch.ones(shape, dtype=torch.bool, device=deltas.device)
    var = deltas.var(dim=0, unbiased=False)
    k = int(topk * int(torch.count_nonzero(var)))
    mask = torch.zeros(var.numel(), dtype=torch.bool, device=deltas.device)
    if k > 0:
        mask[torch.topk(var.reshape(-1), k, largest=True, sorted=False).indices] = True
    return mask.view(shape)


def merge_sce(tensors, base, model_params, params, generator) -> torch.Tensor:
    """SCE merge (module docstring)."""
    base = require_base("sce", base)
    others, _ = split_base(tensors, base, model_params)
    check_shapes("sce", others, base)
    if not others:
        return base.clone()
    deltas = torch.stack([x - base for x in others])  # (n, *shape)
    deltas = deltas * variance_mask(deltas, float(params.get("select_topk", 1.0)))
    energy = deltas.pow(2).reshape(len(others), -1).mean(dim=1)  # (n,)
    total = energy.sum().item()
    if abs(total) < 1e-6:
        coeff = torch.full_like(energy, 1.0 / len(others))
    else:
        coeff = energy / total
    coeff = coeff.view(-1, *([1] * base.dim()))
    erased = coeff * sign_consensus(deltas, bool(params.get("int8_mask", False)))
    merged = (deltas * erased).sum(dim=0) / erased.sum(dim=0).clamp_min(1e-6)
    return base + merged


METHOD = register(
    MergeMethod(
        name="sce",
        func=merge_sce,
        global_params={"select_topk": 1.0, "int8_mask": False},
        requires_base=True,
        module=__name__,
        description="variance select, energy-weighted, sign-consensus merge of task vectors",
    )
)
