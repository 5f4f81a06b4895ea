"""Shared core of RAM and RAM+ (Reinforced Agent Merging, arXiv:2601.13572).

A task-vector entry ``d_i = x_i - base`` is active where ``|d_i| > epsilon``. Per position,
``c`` = number of active models: unique positions (``c == 1``) keep that model's delta times
its scale ``lambda_i``; shared ones (``c > 1``) take the mean of the active deltas.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from npdecode.merge.methods import _mixing
from npdecode.merge.methods._inputs import check_shapes, require_base, split_base

# (shared (n,), unique (n,)): each model's active entries counted where c > 1 and c == 1 -> lambda (n,)
Scales = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def merge_ram_family(method, tensors, base, model_params, epsilon: float, scales: Scales | None):
    """``base + sum_i [c == 1] lambda_i d_i + sum_i [c > 1] active_i d_i / c``.

    Block by block over the flattened tensors (task vectors never stored; the output is the
    one full-size tensor); with ``scales``, a first pass counts the shared and unique active
    entries of every model."""
    base = require_base(method, base)
    others, _ = split_base(tensors, base, model_params)
    check_shapes(method, others, base)
    if not others:
        return base.clone()
    # (n, m) stacks: m = block / n keeps each op within one thread's grain (see _mixing)
    numel, size = base.numel(), max(1, _mixing.block_size(base.device) // len(others))
    fb, flats = base.reshape(-1), [x.reshape(-1) for x in others]

    def block(start, stop):  # (deltas * active (n, m), active (n, m), count (m,)) of one block
        deltas = torch.stack([f[start:stop] - fb[start:stop] for f in flats])
        active = deltas.abs() > epsilon
        return deltas * active, active, active.sum(dim=0)

    lam = torch.ones(len(others), dtype=base.dtype, device=base.device)
    if scales is not None:
        shared = torch.zeros(len(others), dtype=torch.int64, device=base.device)
        unique = torch.zeros(len(others), dtype=torch.int64, device=base.device)
        for start, stop in _mixing.blocks(numel, size):
            _, active, count = block(start, stop)
            shared += (active & (count > 1)).sum(dim=1)
            unique += (active & (count == 1)).sum(dim=1)
        lam = scales(shared.to(torch.float64), unique.to(torch.float64)).to(base.dtype)
    out = torch.empty(base.shape, dtype=base.dtype, device=base.device)
    flat_out = out.view(-1)
    for start, stop in _mixing.blocks(numel, size):
        deltas, _, count = block(start, stop)
        unique_part = (deltas * lam.unsqueeze(-1)).sum(dim=0) * (count == 1)
        shared_part = deltas.sum(dim=0) / count.clamp_min(1) * (count > 1)
        torch.add(fb[start:stop], unique_part + shared_part, out=flat_out[start:stop])
    return out
