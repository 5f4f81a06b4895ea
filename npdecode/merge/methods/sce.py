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

from npdecode.merge.methods import _mixing
from npdecode.merge.methods._inputs import check_shapes, require_base, split_base
from npdecode.merge.methods._select import top_k_mask
from npdecode.merge.methods._task_arithmetic import sign_consensus
from npdecode.merge.registry import MergeMethod, register


def variance_mask(deltas: torch.Tensor, topk: float, variance: torch.Tensor | None = None) -> torch.Tensor:
    """Bool mask ``(*shape)`` of the ``int(topk * #nonzero-variance)`` highest-variance positions
    of ``deltas`` ``(n, *shape)`` (``variance``: their population variance over models, when
    already computed); ties at the threshold go to the first positions in flat order."""
    shape = deltas.shape[1:]
    if topk >= 1:
        return torch.ones(shape, dtype=torch.bool, device=deltas.device)
    var = deltas.var(dim=0, unbiased=False) if variance is None else variance.view(shape)
    return top_k_mask(var, int(topk * int(torch.count_nonzero(var))))


def merge_sce(tensors, base, model_params, params, generator) -> torch.Tensor:
    """SCE merge (module docstring), block by block over the flattened tensors: the task vectors
    are never stored; the full-size tensors are the selection mask (one byte an entry), the
    variance while the mask is chosen, and the output."""
    base = require_base("sce", base)
    others, _ = split_base(tensors, base, model_params)
    check_shapes("sce", others, base)
    if not others:
        return base.clone()
    n, numel = len(others), base.numel()
    size = max(1, _mixing.block_size(base.device) // n)  # (n, m) stacks within one thread's grain
    fb, flats = base.reshape(-1), [x.reshape(-1) for x in others]
    bufs = [torch.empty(min(size, numel), dtype=base.dtype, device=base.device) for _ in others]

    def deltas(start, stop):  # the task vectors of one block (masked), in reused buffers
        ds = [torch.sub(f[start:stop], fb[start:stop], out=bufs[i][: stop - start]) for i, f in enumerate(flats)]
        if mask is not None:
            for d in ds:
                d.mul_(mask[start:stop])
        return ds

    mask = None
    topk = float(params["select_topk"])
    if topk < 1:
        var = torch.empty(numel, dtype=base.dtype, device=base.device)
        for start, stop in _mixing.blocks(numel, size):
            torch.var(torch.stack(deltas(start, stop)), dim=0, correction=0, out=var[start:stop])
        mask = variance_mask(var.view(1, -1).expand(1, -1), topk, variance=var).view(-1)
        del var
    energy = [0.0] * n
    for start, stop in _mixing.blocks(numel, size):
        for i, d in enumerate(deltas(start, stop)):
            energy[i] += torch.dot(d.double(), d.double()).item()
    energy = [e / max(numel, 1) for e in energy]  # mean(d_i ** 2)
    total = sum(energy)
    coeff = [1.0 / n] * n if abs(total) < 1e-6 else [e / total for e in energy]
    out = torch.empty(base.shape, dtype=base.dtype, device=base.device)
    flat_out = out.view(-1)
    int8_mask = bool(params["int8_mask"])
    for start, stop in _mixing.blocks(numel, size):
        ds = deltas(start, stop)
        agree = sign_consensus(torch.stack(ds), int8_mask)  # (n, m)
        num = torch.zeros_like(ds[0])
        den = torch.zeros_like(ds[0])
        for d, keep, c in zip(ds, agree, coeff):
            erased = keep.to(d.dtype) * c
            num.add_(d * erased)
            den.add_(erased)
        torch.add(fb[start:stop], num.div_(den.clamp_min_(1e-6)), out=flat_out[start:stop])
    return out


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
