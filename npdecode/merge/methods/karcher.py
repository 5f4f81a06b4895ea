"""Karcher mean: the Riemannian (Fréchet) mean of the models' directions on the unit sphere,
scaled by their mean norm; every model weighs the same.

Fixed-point iteration from the normalized average of the unit vectors: the log maps
``(u_i - cos θ_i u) θ_i / sin θ_i`` are averaged into ``T`` and the estimate moves along the
exponential map ``u cos|T| + T sin|T| / |T|`` until ``|T| < tol`` or ``max_iter`` steps.
Inputs of norm ``<= tol`` take no part in the direction (all of them: the result is zero).
"""

from __future__ import annotations

import math

import torch

from npdecode.merge.methods._inputs import accumulation_dtype, check_shapes
from npdecode.merge.registry import MergeMethod, register


def karcher_mean(tensors: list[torch.Tensor], max_iter: int, tol: float) -> torch.Tensor:
    """Equal-weight Karcher mean of ``tensors`` (each flattened); shape/dtype of the inputs."""
    shape, dtype = tensors[0].shape, tensors[0].dtype
    acc = accumulation_dtype(tensors[0])
    flat = [t.reshape(-1).to(acc) for t in tensors]
    norms = [torch.linalg.vector_norm(f).item() for f in flat]
    live = [i for i, n in enumerate(norms) if n > tol]
    if not live:
        return torch.zeros_like(tensors[0])
    if len(live) == 1:
        return tensors[live[0]].clone()
    units = [flat[i] / norms[i] for i in live]
    w = 1.0 / len(live)
    u = sum(units) * w
    u_norm = torch.linalg.vector_norm(u).item()
    u = units[0].clone() if u_norm < tol else u / u_norm
    for _ in range(max_iter):
        step = torch.zeros_like(u)
        for ui in units:
            cos = max(-1.0, min(1.0, torch.dot(u, ui).item()))
            theta = math.acos(cos)
            if theta < tol:
                continue
            step.add_((ui - cos * u) * (w * theta / math.sin(theta)))
        step_norm = torch.linalg.vector_norm(step).item()
        if step_norm < tol:
            break
        u = u * math.cos(step_norm) + step * (math.sin(step_norm) / step_norm)
        u = u / torch.linalg.vector_norm(u)
    scale = sum(norms[i] for i in live) * w
    return (u * scale).reshape(shape).to(dtype)


def merge_karcher(tensors, base, model_params, params, generator) -> torch.Tensor:
    """Karcher mean of every model in ``tensors`` (the base model only if listed there)."""
    check_shapes("karcher", tensors)
    if len(tensors) == 1:
        return tensors[0].clone()
    return karcher_mean(list(tensors), int(params.get("max_iter", 10)), float(params.get("tol", 1e-5)))


METHOD = register(
    MergeMethod(
        name="karcher",
        func=merge_karcher,
        global_params={"max_iter": 10, "tol": 1e-5},
        module=__name__,
        description="Riemannian (Karcher) mean of the models on the sphere",
    )
)
