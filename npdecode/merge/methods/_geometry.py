"""Spherical interpolation helpers shared by slerp, nuslerp, multislerp and karcher.

Reductions (norms, dots) of half-precision tensors run in float32; the returned tensors keep
the inputs' dtype.
"""

from __future__ import annotations

import math

import torch

from npdecode.merge.methods import _mixing
from npdecode.merge.methods._inputs import accumulation_dtype


def flat_dot(a: torch.Tensor, b: torch.Tensor) -> float:
    """``<a, b>`` over all entries, as a Python float: float64 products summed block by block
    (a float32 dot over tens of millions of entries drifts by ~1e-4 relative, which moves
    slerp's angle past MergeKit's 1e-5 parity)."""
    fa, fb = a.reshape(-1), b.reshape(-1)
    total = 0.0
    for start, stop in _mixing.blocks(fa.numel(), _mixing.block_size(fa.device)):
        total += torch.dot(fa[start:stop].double(), fb[start:stop].double()).item()
    return total


def flat_norm(a: torch.Tensor) -> float:
    """``||a||_2`` over all entries, as a Python float (accumulated as ``flat_dot``)."""
    return math.sqrt(flat_dot(a, a))


def slerp(t: float, v0: torch.Tensor, v1: torch.Tensor, dot_threshold: float = 0.9995, eps: float = 1e-8):
    """Spherical interpolation of the flattened tensors ``v0`` (t=0) and ``v1`` (t=1).

    The angle comes from the normalized vectors (a vector of norm <= eps is left unnormalized);
    the result combines the original vectors with ``sin((1-t)θ)/sin θ`` and ``sin(tθ)/sin θ``.
    When ``|cos θ| > dot_threshold`` (nearly colinear) it falls back to ``(1-t) v0 + t v1``.
    The output is written block by block (no full-size temporaries).
    """
    n0, n1 = flat_norm(v0), flat_norm(v1)
    dot = flat_dot(v0, v1) / ((n0 if n0 > eps else 1.0) * (n1 if n1 > eps else 1.0))
    if abs(dot) > dot_threshold:
        if not v0.is_floating_point():
            return (1 - t) * v0 + t * v1
        c0 = c1 = None
    else:
        theta = math.acos(max(-1.0, min(1.0, dot)))
        s = math.sin(theta)
        c0, c1 = math.sin((1 - t) * theta) / s, math.sin(t * theta) / s
    out = torch.empty(v0.shape, dtype=v0.dtype, device=v0.device)
    f0, f1, fo = v0.reshape(-1), v1.reshape(-1), out.view(-1)
    for start, stop in _mixing.blocks(f0.numel(), _mixing.block_size(v0.device)):
        if c0 is None:
            torch.lerp(f0[start:stop], f1[start:stop], t, out=fo[start:stop])
        else:
            torch.mul(f0[start:stop], c0, out=fo[start:stop]).add_(f1[start:stop], alpha=c1)
    return out


def slerp_along(t: float, v0: torch.Tensor, v1: torch.Tensor, dim: int | None, eps: float = 1e-8):
    """Slerp of the vectors along ``dim`` of ``v0``/``v1`` (all entries when ``dim`` is None).

    Each pair is normalized (norms clamped at ``eps``); pairs with ``|sin θ| < eps`` (colinear,
    or a zero vector against itself) fall back to the linear ``(1-t) v0 + t v1``.
    """
    shape = v0.shape
    if dim is None:
        v0, v1, dim = v0.reshape(1, -1), v1.reshape(1, -1), -1
    acc = accumulation_dtype(v0)
    a, b = v0.to(acc), v1.to(acc)
    na = torch.linalg.vector_norm(a, dim=dim, keepdim=True).clamp_min(eps)
    nb = torch.linalg.vector_norm(b, dim=dim, keepdim=True).clamp_min(eps)
    cos = ((a / na) * (b / nb)).sum(dim=dim, keepdim=True).clamp(-1.0, 1.0)
    omega = torch.acos(cos)
    sin_omega = torch.sin(omega)
    colinear = sin_omega.abs() < eps
    safe = torch.where(colinear, torch.ones_like(sin_omega), sin_omega)
    c0 = torch.where(colinear, torch.full_like(omega, 1 - t), torch.sin((1 - t) * omega) / safe)
    c1 = torch.where(colinear, torch.full_like(omega, t), torch.sin(t * omega) / safe)
    out = c0.to(v0.dtype) * v0 + c1.to(v0.dtype) * v1
    return out.reshape(shape)
