"""Linear: weighted average ``sum_i w_i x_i`` (divided by ``sum_i w_i`` when ``normalize``).

Model soups (arXiv:2203.05482). Every model in ``models`` takes part, the base model too when
listed there; ``base_model`` itself plays no role.
"""

from __future__ import annotations

import torch

from npdecode.errors import NpdecodeError
from npdecode.merge.methods._inputs import check_shapes, scalars
from npdecode.merge.registry import REQUIRED, MergeMethod, register


def merge_linear(tensors, base, model_params, params, generator) -> torch.Tensor:
    """Weighted sum of ``tensors`` (same shape and dtype as them)."""
    check_shapes("linear", tensors)
    weights = scalars("linear", model_params, "weight", len(tensors))
    out = tensors[0] * weights[0]
    for x, w in zip(tensors[1:], weights[1:], strict=True):
        out.add_(x, alpha=w)
    if params["normalize"]:
        total = sum(weights)
        if abs(total) < 1e-8:
            raise NpdecodeError(
                f"linear: the models' weights sum to {total:g}; change the weights or set normalize: false"
            )
        out.div_(total)
    return out


METHOD = register(
    MergeMethod(
        name="linear",
        func=merge_linear,
        global_params={"normalize": True},
        tensor_params={"weight": REQUIRED},
        module=__name__,
        description="weighted average of the models",
    )
)
