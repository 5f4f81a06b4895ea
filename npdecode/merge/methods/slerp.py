"""SLERP: spherical interpolation between the base model (t=0) and one other model (t=1).

The angle is taken between the two flattened tensors; nearly colinear pairs
(``|cos θ| > 0.9995``) are interpolated linearly instead.
"""

from __future__ import annotations

import torch

from npdecode.merge.methods._geometry import slerp
from npdecode.merge.methods._inputs import check_shapes, require_base, require_count, split_base
from npdecode.merge.registry import REQUIRED, MergeMethod, register


def merge_slerp(tensors, base, model_params, params, generator) -> torch.Tensor:
    """``slerp(t, base, other)``; the base alone (only model listed) is returned as is."""
    base = require_base("slerp", base)
    others, _ = split_base(tensors, base, model_params)
    check_shapes("slerp", others, base)
    if not others:
        return base.clone()
    require_count("slerp", others, 1, "exactly two models: the base_model and one other")
    return slerp(float(params["t"]), base, others[0])


METHOD = register(
    MergeMethod(
        name="slerp",
        func=merge_slerp,
        global_params={"t": REQUIRED},
        requires_base=True,
        module=__name__,
        description="spherical interpolation between base_model (t=0) and the other model (t=1)",
    )
)
