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

from npdecode.merge.methods import _mixing
from npdecode.merge.methods._inputs import accumulation_dtype, check_shapes
from npdecode.merge.registry import MergeMethod, register


def karcher_mean(tensors: list[torch.Tensor], max_iter: int, tol: float) -> torch.Tensor:
    """Equal-weight Karcher mean of ``tensors`` (each flattened); shape/dtype of the inputs.

    The estimate ``u`` (in the accumulation dtype) is the only full-size tensor: the unit
    vectors ``x_i / ||x_i||`` and each step's tangent mean are made block by block from the
    inputs when needed (three passes an iteration: the dots ``<u, u_i>``; the step's norm; the
    update, with the new norm). Norms and dots accumulate in float64.
    """
    shape, dtype, device = tensors[0].shape, tensors[0].dtype, tensors[0].device
    acc = accumulation_dtype(tensors[0])
    size = _mixing.block_size(device)
    flats = [t.reshape(-1) for t in tensors]
    numel = flats[0].numel()
    norms = [math.sqrt(_dot(f, f, acc, size)) for f in flats]
    live = [i for i, n in enumerate(norms) if n > tol]
    if not live:
        return torch.zeros_like(tensors[0])
    if len(live) == 1:
        return tensors[live[0]].clone()
    units = [(flats[i], 1.0 / norms[i]) for i in live]  # u_i = x_i * (1 / ||x_i||), made per block
    w = 1.0 / len(live)
    u = torch.zeros(numel, dtype=acc, device=device)
    for start, stop in _mixing.blocks(numel, size):
        for f, inv in units:
            u[start:stop].add_(f[start:stop].to(acc) * inv)
    u.mul_(w)
    u_norm = math.sqrt(_dot(u, u, acc, size))
    if u_norm < tol:
        u.copy_(flats[live[0]]).mul_(units[0][1])
    else:
        u.div_(u_norm)
    step = torch.empty(min(size, numel), dtype=acc, device=device)

    def step_block(start: int, stop: int, coefs: list[tuple[float, float]]) -> torch.Tensor:
        """sum_i coef_i (u_i - cos_i u) over one block (the weighted log maps)."""
        out = step[: stop - start].zero_()
        for (f, inv), (cos, coef) in zip(units, coefs):
            if coef:
                out.add_((f[start:stop].to(acc) * inv).sub_(u[start:stop], alpha=cos), alpha=coef)
        return out

    for _ in range(max_iter):
        coefs = []
        for f, inv in units:
            cos = max(-1.0, min(1.0, _dot(u, f, acc, size) * inv))
            theta = math.acos(cos)
            coefs.append((cos, 0.0 if theta < tol else w * theta / math.sin(theta)))
        step_sq = 0.0
        for start, stop in _mixing.blocks(numel, size):
            block = step_block(start, stop, coefs)
            step_sq += torch.dot(block.double(), block.double()).item()
        step_norm = math.sqrt(step_sq)
        if step_norm < tol:
            break
        c_u, c_step = math.cos(step_norm), math.sin(step_norm) / step_norm
        new_sq = 0.0
        for start, stop in _mixing.blocks(numel, size):
            block = step_block(start, stop, coefs)  # from the old u of this block
            new = u[start:stop].mul_(c_u).add_(block, alpha=c_step)
            new_sq += torch.dot(new.double(), new.double()).item()
        u.div_(math.sqrt(new_sq))
    scale = sum(norms[i] for i in live) * w
    return u.mul_(scale).reshape(shape).to(dtype)


def _dot(a: torch.Tensor, b: torch.Tensor, acc: torch.dtype, size: int) -> float:
    """``<a, b>`` of two flat tensors, block by block in ``acc``, summed in float64."""
    total = 0.0
    for start, stop in _mixing.blocks(a.numel(), size):
        total += torch.dot(a[start:stop].double(), b[start:stop].double()).item()
    return total


def merge_karcher(tensors, base, model_params, params, generator) -> torch.Tensor:
    """Karcher mean of every model in ``tensors`` (the base model only if listed there)."""
    check_shapes("karcher", tensors)
    if len(tensors) == 1:
        return tensors[0].clone()
    return karcher_mean(list(tensors), int(params["max_iter"]), float(params["tol"]))


METHOD = register(
    MergeMethod(
        name="karcher",
        func=merge_karcher,
        global_params={"max_iter": 10, "tol": 1e-5},
        module=__name__,
        description="Riemannian (Karcher) mean of the models on the sphere",
    )
)
