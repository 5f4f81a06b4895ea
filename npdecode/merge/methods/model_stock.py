"""Model Stock (arXiv:2403.19522): interpolate between the base and the average of N >= 2
fine-tuned models with ``t = N cos θ / (1 + (N - 1) cos θ)``.

``cos θ`` is the mean pairwise cosine between the task vectors ``x_i - base`` (norm products
clamped at 1e-6, cosines clipped to [-1, 1]); ``out = t * mean_i x_i + (1 - t) * base``. With
``filter_wise`` the cosine and ``t`` are per row (slices along the last dim) instead of per tensor.
"""

from __future__ import annotations

import torch

from npdecode.errors import NpdecodeError
from npdecode.merge.methods import _mixing
from npdecode.merge.methods._inputs import accumulation_dtype, check_shapes, require_base, split_base
from npdecode.merge.registry import MergeMethod, register


def merge_model_stock(tensors, base, model_params, params, generator) -> torch.Tensor:
    """Model Stock merge of the non-base models toward ``base``."""
    base = require_base("model_stock", base)
    others, _ = split_base(tensors, base, model_params)
    check_shapes("model_stock", others, base)
    if len(others) < 2:
        raise NpdecodeError(f"model_stock needs at least two models besides the base_model, got {len(others)}")
    acc = accumulation_dtype(base)
    filter_wise = params["filter_wise"] and base.dim() > 0
    width = base.shape[-1] if filter_wise else max(base.numel(), 1)
    b = base.reshape(-1, width)  # (rows, width): one row per filter, or one in all
    xs = [x.reshape(-1, width) for x in others]
    out = torch.empty(b.shape, dtype=base.dtype, device=base.device)
    size = _mixing.block_size(base.device)
    # whole rows at a time when they are narrow; otherwise one row in column blocks, two passes
    step = max(1, size // width)
    for r0 in range(0, b.shape[0], step):
        rows = slice(r0, r0 + step)
        t = _interpolation_weight([x[rows] for x in xs], b[rows], acc, size)  # (r, 1) float64
        for c0 in range(0, width, size):
            cols = slice(c0, c0 + size)
            mean = sum(x[rows, cols].to(acc) for x in xs) / len(xs)
            block = t.to(acc) * mean + (1 - t).to(acc) * b[rows, cols].to(acc)
            out[rows, cols] = block
    return out.reshape(base.shape)


def _interpolation_weight(xs, b, acc, size) -> torch.Tensor:
    """``t = n cos / (1 + (n - 1) cos)`` per row of ``b`` (``(r, width)``), as ``(r, 1)`` float64:
    the mean pairwise cosine of the task vectors ``x_i - b``, their dots and norms summed in
    float64 over column blocks of at most ``size`` entries."""
    n = len(xs)
    dots = torch.zeros(n, n, b.shape[0], dtype=torch.float64, device=b.device)  # <o_i, o_j> per row
    for c0 in range(0, b.shape[1], size):
        cols = slice(c0, c0 + size)
        offsets = [x[:, cols].to(acc) - b[:, cols].to(acc) for x in xs]
        for i in range(n):
            for j in range(i, n):
                dots[i, j] += (offsets[i] * offsets[j]).sum(-1).double()
    norms = [dots[i, i].sqrt() for i in range(n)]
    cosines = [
        (dots[i, j] / (norms[i] * norms[j]).clamp_min(1e-6)).clamp(-1, 1) for i in range(n) for j in range(i + 1, n)
    ]
    cos = torch.stack(cosines).mean(dim=0).unsqueeze(-1)  # (r, 1)
    return n * cos / (1 + (n - 1) * cos)


METHOD = register(
    MergeMethod(
        name="model_stock",
        func=merge_model_stock,
        global_params={"filter_wise": False},
        requires_base=True,
        module=__name__,
        description="interpolate base and model average with a weight from the task vectors' angle",
    )
)
