"""NuSLERP: slerp between two models with ``t = w2 / (w1 + w2)``, over the whole tensor or per
row/column; with a base model it interpolates the task vectors and adds the base back.

``nuslerp_flatten`` (default true) treats the tensor as one vector; otherwise each slice
``x[i, ...]`` along dim 0 is slerped on its own, or with ``nuslerp_row_wise`` each slice
``x[..., j]`` along the last dim. This is what MergeKit 0.1.5 computes (checked by
``benchmarks/merge_parity.py``), although its documentation words the flag the other way round.
1-D tensors are always one vector.
"""

from __future__ import annotations

import torch

from npdecode.errors import NpdecodeError
from npdecode.merge.methods._geometry import slerp_along
from npdecode.merge.methods._inputs import check_shapes, require_count, scalars, split_base
from npdecode.merge.registry import REQUIRED, MergeMethod, register


def merge_nuslerp(tensors, base, model_params, params, generator) -> torch.Tensor:
    """Slerp of the two (task-vector) tensors, plus the base when there is one."""
    others, per_model = split_base(tensors, base, model_params)
    check_shapes("nuslerp", others, base)
    require_count("nuslerp", others, 2, "exactly two models besides the optional base_model")
    w0, w1 = scalars("nuslerp", per_model, "weight", 2)
    if abs(w0 + w1) < 1e-12:
        raise NpdecodeError(f"nuslerp: the two weights sum to zero ({w0:g} + {w1:g}); change them")
    t = w1 / (w0 + w1)
    v0, v1 = others
    if base is not None:
        v0, v1 = v0 - base, v1 - base
    if params.get("nuslerp_flatten", True) or v0.dim() < 2:
        dim = None
    else:
        dim = 0 if params.get("nuslerp_row_wise", False) else -1  # dim along which vectors lie
    out = slerp_along(t, v0, v1, dim)
    return out + base if base is not None else out


METHOD = register(
    MergeMethod(
        name="nuslerp",
        func=merge_nuslerp,
        global_params={"nuslerp_flatten": True, "nuslerp_row_wise": False},
        tensor_params={"weight": REQUIRED},
        module=__name__,
        description="slerp of two models (or their task vectors) with t = w2 / (w1 + w2)",
    )
)
