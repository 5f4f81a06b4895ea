"""NuSLERP: slerp between two models with ``t = w2 / (w1 + w2)``, over the whole tensor or per
row/column; with a base model it interpolates the task vectors and adds the base back.

``nuslerp_flatten`` (default true) treats the tensor as one vector; otherwise each slice
``x[i, ...]`` along dim 0 is slerped on its own, or with ``nuslerp_row_wise`` each slice
``x[..., j]`` along the last dim. This is what MergeKit 0.1.5 computes (checked by
``benchmarks/merge_parity.py``), although its documentation words the flag the other way round.
1-D tensors are always one vector.
"""

from __future__ import annotations

import math

import torch

from npdecode.errors import NpdecodeError
from npdecode.merge.methods import _mixing
from npdecode.merge.methods._geometry import slerp_along
from npdecode.merge.methods._inputs import (
    check_shapes,
    require_count,
    scalars,
    split_base,
)
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
    if params["nuslerp_flatten"] or v0.dim() < 2:
        return _flat_nuslerp(t, v0, v1, base)
    if base is not None:
        v0, v1 = v0 - base, v1 - base
    dim = 0 if params["nuslerp_row_wise"] else -1  # dim along which vectors lie
    out = slerp_along(t, v0, v1, dim)
    return out + base if base is not None else out


def _flat_nuslerp(t: float, x0: torch.Tensor, x1: torch.Tensor, base: torch.Tensor | None, eps: float = 1e-8):
    """``slerp_along(t, v0, v1, None)`` (+ base) of the task vectors ``v_i = x_i - base`` (the
    tensors themselves without a base), block by block: one pass for the two norms and the dot
    product, one for ``base + c0 v0 + c1 v1``. The only full-size tensor is the output (the
    task vectors are never stored); norms, dot and coefficients are computed in float64."""
    size = _mixing.block_size(x0.device)
    f0, f1 = x0.reshape(-1), x1.reshape(-1)
    fb = base.reshape(-1) if base is not None else None
    buf0 = torch.empty(size, dtype=x0.dtype, device=x0.device)
    buf1 = torch.empty(size, dtype=x0.dtype, device=x0.device)

    def block(start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        if fb is None:
            return f0[start:stop], f1[start:stop]
        m = stop - start
        return (torch.sub(f0[start:stop], fb[start:stop], out=buf0[:m]),
                torch.sub(f1[start:stop], fb[start:stop], out=buf1[:m]))  # fmt: skip

    sq0 = sq1 = dot = 0.0
    for start, stop in _mixing.blocks(f0.numel(), size):
        a, b = (v.double() for v in block(start, stop))  # float64 products: exact enough at any size
        sq0 += torch.dot(a, a).item()
        sq1 += torch.dot(b, b).item()
        dot += torch.dot(a, b).item()
    n0, n1 = max(math.sqrt(sq0), eps), max(math.sqrt(sq1), eps)
    omega = math.acos(max(-1.0, min(1.0, dot / (n0 * n1))))
    if abs(math.sin(omega)) < eps:  # colinear (or zero vectors): linear interpolation
        c0, c1 = 1 - t, t
    else:
        c0, c1 = math.sin((1 - t) * omega) / math.sin(omega), math.sin(t * omega) / math.sin(omega)
    out = torch.empty(x0.shape, dtype=x0.dtype, device=x0.device)
    flat = out.view(-1)
    for start, stop in _mixing.blocks(f0.numel(), size):
        a, b = block(start, stop)
        mixed = torch.mul(a, c0, out=flat[start:stop]).add_(b, alpha=c1)
        if fb is not None:
            mixed.add_(fb[start:stop])
    return out


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
