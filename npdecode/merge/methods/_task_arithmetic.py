"""Generalized task arithmetic: the shared core of task_arithmetic, TIES, DARE, Breadcrumbs and
DELLA (one registered method per module; this module registers nothing).

For non-base models ``i`` with tensors ``x_i``, weights ``w_i`` and the base ``b``::

    tv_i  = sparsify(x_i - b)                     # per the method, per model density
    d_i   = w_i * tv_i
    m_i   = sign(d_i) == majority sign of sum_i d_i   (sign consensus 'sum'; all ones without)
    mixed = sum_i m_i * d_i
    if normalize: mixed /= sum_i m_i * w_i         (entries where that is ~0 are left as is)
    out   = b + lambda * mixed
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from npdecode.merge.methods import _sparsify
from npdecode.merge.methods._inputs import check_shapes, require_base, scalars, split_base
from npdecode.merge.registry import REQUIRED, MergeMethod

# sparsify(tv, model_index, per-model params, global params, generator) -> sparse tv
Sparsifier = Callable[[torch.Tensor, int, Mapping[str, list[float]], Mapping[str, Any], Any], torch.Tensor]


def sign_consensus(deltas: torch.Tensor, int8_mask: bool = False) -> torch.Tensor:
    """TIES elect: mask of entries whose sign matches the sign of the sum over models.

    ``deltas``: ``(n, *shape)`` weighted task vectors. The majority sign of a zero sum is +1, and
    zero entries never match. Returns an int8 mask when ``int8_mask``, else bool (both one byte
    an entry; MergeKit's int8 option exists to avoid a float mask, which we never build).
    """
    positive = deltas.sum(dim=0) >= 0  # (*shape)
    mask = torch.where(positive, deltas > 0, deltas < 0)
    return mask.to(torch.int8) if int8_mask else mask


def merge_task_vectors(
    method: str,
    tensors: Sequence[torch.Tensor],
    base: torch.Tensor | None,
    model_params: Mapping[str, Sequence[Any]],
    params: Mapping[str, Any],
    generator: torch.Generator | None,
    *,
    sparsify: Sparsifier | None,
    consensus: bool,
) -> torch.Tensor:
    """The merged tensor of the formula in the module docstring (shape and dtype of ``base``).

    Memory: one ``(n, *shape)`` buffer of weighted task vectors, filled in place, one byte an
    entry for the consensus mask, and a few ``shape``-sized temporaries.
    """
    base = require_base(method, base)
    others, per_model = split_base(tensors, base, model_params)
    check_shapes(method, others, base)
    if not others:
        return base.clone()
    weights = scalars(method, per_model, "weight", len(others))
    numeric = {k: scalars(method, per_model, k, len(others)) for k in per_model if k != "weight"}
    deltas = torch.empty((len(others), *base.shape), dtype=base.dtype, device=base.device)
    for i, x in enumerate(others):
        tv = torch.sub(x, base, out=deltas[i])
        if sparsify is not None:
            sparse = sparsify(tv, i, numeric, params, generator)
            if sparse is not tv:
                tv.copy_(sparse)
            del sparse
        tv.mul_(weights[i])
    normalize = bool(params.get("normalize", False))
    if consensus:
        mask = sign_consensus(deltas, bool(params.get("int8_mask", False)))
        deltas.mul_(mask)
        mixed = deltas.sum(dim=0)
        del deltas
        if normalize:
            divisor = torch.zeros_like(mixed)
            for i, w in enumerate(weights):
                divisor.add_(mask[i], alpha=w)
            del mask
            divisor = torch.where(divisor.abs() < 1e-8, torch.ones_like(divisor), divisor)
            mixed.div_(divisor)
    else:
        mixed = deltas.sum(dim=0)
        del deltas
        total = sum(weights)
        if normalize and abs(total) >= 1e-8:
            mixed.div_(total)
    lam = float(params.get("lambda", 1.0))
    if lam != 1.0:
        mixed.mul_(lam)
    return mixed.add_(base)


def _magnitude(tv, i, numeric, params, generator):
    return _sparsify.magnitude(tv, numeric["density"][i], bool(params["rescale"]))


def _random(tv, i, numeric, params, generator):
    return _sparsify.bernoulli(tv, numeric["density"][i], bool(params["rescale"]), generator)


def _outliers(tv, i, numeric, params, generator):
    return _sparsify.magnitude_outliers(
        tv, numeric["density"][i], numeric["gamma"][i], bool(params["rescale"])
    )


def _della(tv, i, numeric, params, generator):
    return _sparsify.rank_magnitude(
        tv, numeric["density"][i], numeric["epsilon"][i], bool(params["rescale"]), generator
    )


SPARSIFIERS: dict[str, Sparsifier] = {
    "magnitude": _magnitude,
    "random": _random,
    "magnitude_outliers": _outliers,
    "rank_magnitude": _della,
}
_EXTRA_MODEL_PARAMS = {"magnitude_outliers": {"gamma": 0.01}, "rank_magnitude": {"epsilon": 0.15}}


def task_arithmetic_method(
    name: str,
    module: str,
    *,
    sparsification: str | None,
    consensus: bool,
    normalize: bool,
    rescale: bool,
    description: str,
) -> MergeMethod:
    """A ``MergeMethod`` of the task-arithmetic family with MergeKit's parameters and defaults.

    Global: ``int8_mask`` (False), ``normalize``, ``lambda`` (1.0), ``rescale``. Per model:
    ``weight`` (required), ``density`` (1.0), plus ``gamma`` (0.01, Breadcrumbs) or ``epsilon``
    (0.15, DELLA).
    """
    sparsify = SPARSIFIERS[sparsification] if sparsification else None

    def func(tensors, base, model_params, params, generator):
        return merge_task_vectors(
            name, tensors, base, model_params, params, generator, sparsify=sparsify, consensus=consensus
        )

    func.__name__ = f"merge_{name}"
    func.__doc__ = description
    tensor_params: dict[str, Any] = {"weight": REQUIRED, "density": 1.0}
    tensor_params.update(_EXTRA_MODEL_PARAMS.get(sparsification or "", {}))
    return MergeMethod(
        name=name,
        func=func,
        global_params={"int8_mask": False, "normalize": normalize, "lambda": 1.0, "rescale": rescale},
        tensor_params=tensor_params,
        requires_base=True,
        uses_random=sparsification in ("random", "rank_magnitude"),
        module=module,
        description=description,
    )
