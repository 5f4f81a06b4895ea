"""Model Stock (arXiv:2403.19522): interpolate between the base and the average of N >= 2
fine-tuned models with ``t = N cos θ / (1 + (N - 1) cos θ)``.

``cos θ`` is the mean pairwise cosine between the task vectors ``x_i - base`` (norm products
clamped at 1e-6, cosines clipped to [-1, 1]); ``out = t * mean_i x_i + (1 - t) * base``. With
``filter_wise`` the cosine and ``t`` are per row (slices along the last dim) instead of per tensor.
"""

from __future__ import annotations

import torch

from npdecode.errors import NpdecodeError
from npdecode.merge.methods._inputs import accumulation_dtype, check_shapes, require_base, split_base
from npdecode.merge.registry import MergeMethod, register


def merge_model_stock(tensors, base, model_params, params, generator) -> torch.Tensor:
    """Model Stock merge of the non-base models toward ``base``."""
    base = require_base("model_stock", base)
    others, _ = split_base(tensors, base, model_params)
    check_shapes("model_stock", others, base)
    if len(others) < 2:
        raise NpdecodeError(
            f"model_stock needs at least two models besides the base_model, got {len(others)}"
        )
    acc = accumulation_dtype(base)
    filter_wise = params.get("filter_wise", False) and base.dim() > 0
    width = base.shape[-1] if filter_wise else max(base.numel(), 1)

    def rows(t: torch.Tensor) -> torch.Tensor:  # (rows, width): one row per filter, or one in all
        return t.to(acc).reshape(-1, width)

    b = rows(base)
    offsets = [rows(x) - b for x in others]
    norms = [torch.linalg.vector_norm(o, dim=-1) for o in offsets]
    cosines = [
        ((offsets[i] * offsets[j]).sum(-1) / (norms[i] * norms[j]).clamp_min(1e-6)).clamp(-1, 1)
        for i in range(len(offsets))
        for j in range(i + 1, len(offsets))
    ]
    cos = torch.stack(cosines).mean(dim=0).unsqueeze(-1)  # (rows, 1)
    n = len(others)
    t = n * cos / (1 + (n - 1) * cos)
    mean = sum(rows(x) for x in others) / n
    out = t * mean + (1 - t) * b
    return out.reshape(base.shape).to(base.dtype)


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
