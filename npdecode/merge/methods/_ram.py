"""Shared core of RAM and RAM+ (Reinforced Agent Merging, arXiv:2601.13572).

A task-vector entry ``d_i = x_i - base`` is active where ``|d_i| > epsilon``. Per position,
``c`` = number of active models: unique positions (``c == 1``) keep that model's delta times
its scale ``lambda_i``; shared ones (``c > 1``) take the mean of the active deltas.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from npdecode.merge.methods._inputs import check_shapes, require_base, split_base

# (active (n, N) bool, count (N,)) -> lambda (n,)
Scales = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def merge_ram_family(method, tensors, base, model_params, epsilon: float, scales: Scales | None):
    """``base + sum_i [c == 1] lambda_i d_i + sum_i [c > 1] active_i d_i / c``."""
    base = require_base(method, base)
    others, _ = split_base(tensors, base, model_params)
    check_shapes(method, others, base)
    if not others:
        return base.clone()
    deltas = torch.stack([(x - base).reshape(-1) for x in others])  # (n, N)
    active = deltas.abs() > epsilon
    count = active.sum(dim=0)  # (N,)
    deltas = deltas * active
    unique = count == 1
    lam = torch.ones(len(others), dtype=deltas.dtype, device=deltas.device)
    if scales is not None:
        lam = scales(active, count).to(deltas.dtype)
    unique_part = (deltas * lam.unsqueeze(-1)).sum(dim=0) * unique
    shared_part = deltas.sum(dim=0) / count.clamp_min(1) * (count > 1)
    return base + (unique_part + shared_part).reshape(base.shape)
