"""Multi-SLERP: weighted barycentric interpolation of several models on the hypersphere.

With unit vectors ``u_i = x_i / (||x_i|| + eps)`` and weights ``w_i`` (normalized to sum 1 when
``normalize_weights``): the weighted mean ``m = sum w_i u_i`` is normalized, the ``u_i`` are
projected onto the tangent space at ``m`` (``v_i = u_i - <u_i, m> m``), averaged
(``v = sum w_i v_i``), mapped back with the exponential map
(``m cos|v| + v sin|v| / |v|``) and scaled by the weighted mean norm ``sum w_i ||x_i||``.
With a base model the ``x_i`` are task vectors and the base is added back. Two antipodal inputs
whose mean vanishes fall back to the linear ``w_0 x_0 + w_1 x_1``; more than two is an error.
"""

from __future__ import annotations

import torch

from npdecode.errors import NpdecodeError
from npdecode.merge.methods._inputs import accumulation_dtype, check_shapes, scalars, split_base
from npdecode.merge.registry import REQUIRED, MergeMethod, register


def merge_multislerp(tensors, base, model_params, params, generator) -> torch.Tensor:
    """The spherical barycenter described in the module docstring."""
    others, per_model = split_base(tensors, base, model_params)
    check_shapes("multislerp", others, base)
    if len(others) == 1:
        return others[0].clone()
    eps = float(params.get("eps", 1e-8))
    weights = scalars("multislerp", per_model, "weight", len(others))
    if params.get("normalize_weights", True):
        total = sum(weights)
        if abs(total) < 1e-12:
            raise NpdecodeError("multislerp: the models' weights sum to zero; change them")
        weights = [w / total for w in weights]
    shape, dtype = others[0].shape, others[0].dtype
    acc = accumulation_dtype(others[0])
    x = torch.stack([(t - base if base is not None else t).reshape(-1).to(acc) for t in others])  # (n, N)
    w = torch.tensor(weights, dtype=acc, device=x.device).unsqueeze(-1)  # (n, 1)
    norms = torch.linalg.vector_norm(x, dim=-1, keepdim=True)  # (n, 1)
    units = x / (norms + eps)
    mean = (units * w).sum(dim=0)
    mean_norm = torch.linalg.vector_norm(mean)
    if mean_norm < eps:
        if len(others) != 2:
            raise NpdecodeError("multislerp: the weighted mean of the inputs' directions is zero")
        out = (x * w).sum(dim=0)
    else:
        mean = mean / mean_norm
        tangent = units - (units @ mean).unsqueeze(-1) * mean
        v = (tangent * w).sum(dim=0)
        v_norm = torch.linalg.vector_norm(v) + eps
        out = (mean * torch.cos(v_norm) + v * (torch.sin(v_norm) / v_norm)) * (norms * w).sum()
    out = out.reshape(shape).to(dtype)
    return out + base if base is not None else out


METHOD = register(
    MergeMethod(
        name="multislerp",
        func=merge_multislerp,
        global_params={"normalize_weights": True, "eps": 1e-8},
        tensor_params={"weight": REQUIRED},
        module=__name__,
        description="barycentric spherical interpolation of two or more models",
    )
)
