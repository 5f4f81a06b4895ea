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

import math

import torch

from npdecode.errors import NpdecodeError
from npdecode.merge.methods import _mixing
from npdecode.merge.methods._inputs import accumulation_dtype, check_shapes, scalars, split_base
from npdecode.merge.registry import REQUIRED, MergeMethod, register


def merge_multislerp(tensors, base, model_params, params, generator) -> torch.Tensor:
    """The spherical barycenter described in the module docstring."""
    others, per_model = split_base(tensors, base, model_params)
    check_shapes("multislerp", others, base)
    if len(others) == 1:
        return others[0].clone()
    eps = float(params["eps"])
    weights = scalars("multislerp", per_model, "weight", len(others))
    if params["normalize_weights"]:
        total = sum(weights)
        if abs(total) < 1e-12:
            raise NpdecodeError("multislerp: the models' weights sum to zero; change them")
        weights = [w / total for w in weights]
    return _barycenter(others, base, weights, eps)


def _barycenter(others, base, weights, eps) -> torch.Tensor:
    """The module docstring's formula, block by block over the flattened inputs: four passes
    (norms; mean direction and the dots ``<u_i, m>``; the tangent mean ``v`` and its norm; the
    output), with block-sized temporaries only (the output is the one full-size tensor).
    Norms and dots accumulate in float64."""
    n = len(others)
    dtype, device = others[0].dtype, others[0].device
    acc = accumulation_dtype(others[0])
    size = _mixing.block_size(device)
    flats = [t.reshape(-1) for t in others]
    fb = base.reshape(-1) if base is not None else None
    bufs = [torch.empty(size, dtype=acc, device=device) for _ in range(n)]

    def xs(start, stop):  # (m,) task vectors (or tensors) of one block, in acc, in own buffers
        m = stop - start
        if fb is None:
            return [bufs[i][:m].copy_(f[start:stop]) for i, f in enumerate(flats)]
        if acc == dtype:
            return [torch.sub(f[start:stop], fb[start:stop], out=bufs[i][:m]) for i, f in enumerate(flats)]
        return [bufs[i][:m].copy_(f[start:stop]).sub_(fb[start:stop]) for i, f in enumerate(flats)]

    def passes():
        return _mixing.blocks(flats[0].numel(), size)

    norms = [0.0] * n
    for start, stop in passes():
        for i, x in enumerate(xs(start, stop)):
            norms[i] += _dot(x, x)
    norms = [math.sqrt(q) for q in norms]
    inv = [1.0 / (q + eps) for q in norms]

    def mean_of(x):  # sum_i w_i u_i of one block (units overwrite the block's x_i)
        units = [xi.mul_(c) for xi, c in zip(x, inv)]
        mean = units[0] * weights[0]
        for u, w in zip(units[1:], weights[1:]):
            mean.add_(u, alpha=w)
        return units, mean

    mean_sq, dots = 0.0, [0.0] * n
    for start, stop in passes():
        units, mean = mean_of(xs(start, stop))
        mean_sq += _dot(mean, mean)
        for i, u in enumerate(units):
            dots[i] += _dot(u, mean)
    mean_norm = math.sqrt(mean_sq)
    out = torch.empty(others[0].shape, dtype=dtype, device=device)
    flat_out = out.view(-1)
    if mean_norm < eps:
        if n != 2:
            raise NpdecodeError("multislerp: the weighted mean of the inputs' directions is zero")
        for start, stop in passes():  # antipodal pair: linear
            x = xs(start, stop)
            mixed = x[0].mul_(weights[0]).add_(x[1], alpha=weights[1])
            _finish(mixed, flat_out[start:stop], fb, start, stop)
        return out
    proj = [d / mean_norm for d in dots]  # <u_i, m> with m the unit mean direction

    def tangent_of(x):  # (m, v) of one block: unit mean direction, weighted tangent mean
        units, mean = mean_of(x)
        mean.div_(mean_norm)
        v = torch.zeros_like(mean)
        for u, w, c in zip(units, weights, proj):
            v.add_(u.sub_(mean, alpha=c), alpha=w)
        return mean, v

    v_sq = 0.0
    for start, stop in passes():
        _, v = tangent_of(xs(start, stop))
        v_sq += _dot(v, v)
    v_norm = math.sqrt(v_sq) + eps
    scale = sum(q * w for q, w in zip(norms, weights))
    for start, stop in passes():
        mean, v = tangent_of(xs(start, stop))
        mixed = mean.mul_(math.cos(v_norm)).add_(v, alpha=math.sin(v_norm) / v_norm).mul_(scale)
        _finish(mixed, flat_out[start:stop], fb, start, stop)
    return out


def _dot(a: torch.Tensor, b: torch.Tensor) -> float:
    """``<a, b>`` of two blocks with float64 products (the passes sum these in float64)."""
    return torch.dot(a.double(), b.double()).item()


def _finish(mixed: torch.Tensor, out: torch.Tensor, fb: torch.Tensor | None, start: int, stop: int) -> None:
    """``out = mixed`` in the output dtype, plus the base (when there is one)."""
    out.copy_(mixed)
    if fb is not None:
        out.add_(fb[start:stop])


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
