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

# sparsify(tv, model_index, per-model params, global params, generator[, plan=]) -> sparse tv
Sparsifier = Callable[..., torch.Tensor]
# prepare(task vector it may overwrite, model_index, per-model params) -> plan for sparsify(plan=)
Preparer = Callable[[torch.Tensor, int, Mapping[str, list[float]]], Any]


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
    prepare: Preparer | None = None,
) -> torch.Tensor:
    """The merged tensor of the formula in the module docstring (shape and dtype of ``base``).

    Memory: one task vector per model, sparsified in place; the result is written over the first
    one. Sign election and the (disjoint) mean are elementwise once the task vectors are known,
    so they run over blocks of ``_sparsify.BLOCK`` entries with block-sized temporaries only.
    ``prepare`` (magnitude trimming) runs for every model before any task vector is kept, so
    that its occasional full sort (ties at the cut) never coexists with the other task vectors;
    its result reaches ``sparsify`` as ``plan``.
    """
    base = require_base(method, base)
    others, per_model = split_base(tensors, base, model_params)
    check_shapes(method, others, base)
    if not others:
        return base.clone()
    weights = scalars(method, per_model, "weight", len(others))
    numeric = {k: scalars(method, per_model, k, len(others)) for k in per_model if k != "weight"}
    plans = [prepare(_task_vector(x, base), i, numeric) for i, x in enumerate(others)] if prepare else None
    deltas = []
    for i, x in enumerate(others):
        tv = _task_vector(x, base)
        if sparsify is not None:
            extra = {"plan": plans[i]} if plans else {}
            sparse = sparsify(tv, i, numeric, params, generator, **extra)
            if sparse is not tv:
                tv.copy_(sparse)
            del sparse
        deltas.append(tv.mul_(weights[i]))
    normalize = bool(params.get("normalize", False))
    lam = float(params.get("lambda", 1.0))
    flats = [d.view(-1) for d in deltas]
    base_flat = base.reshape(-1)
    total = sum(weights)
    for start, stop in _sparsify._blocks(base.numel()):
        block = [f[start:stop] for f in flats]
        if consensus:
            mixed = _disjoint_mean(block, weights, normalize)
        else:
            mixed = torch.stack(block).sum(dim=0)
            if normalize and abs(total) >= 1e-8:
                mixed.div_(total)
        if lam != 1.0:
            mixed.mul_(lam)
        block[0].copy_(mixed.add_(base_flat[start:stop]))
    out = deltas[0]
    del flats, deltas
    return out


def _task_vector(x: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """``x - base`` as a new contiguous tensor of ``base``'s dtype."""
    return torch.sub(x, base, out=torch.empty(base.shape, dtype=base.dtype, device=base.device))


def _disjoint_mean(block: Sequence[torch.Tensor], weights: Sequence[float], normalize: bool) -> torch.Tensor:
    """TIES elect + merge on one block of the ``n`` weighted task vectors (each ``(m,)``).

    Entries whose sign disagrees with the majority sign of the block's sum are left out; with
    ``normalize`` the sum is divided by the summed weights of the entries kept (where that is
    ~0 the sum is left as is). Model by model, without stacking the block (one pass less and
    no ``(n, m)`` temporary): about 1.6x faster than stack + mask + sum, same values.
    """
    total = block[0].clone()
    for d in block[1:]:
        total.add_(d)
    positive = total >= 0  # the majority sign of a zero sum is +1 (as sign_consensus)
    mixed = total.zero_()
    divisor = torch.zeros_like(mixed) if normalize else None
    for d, w in zip(block, weights):
        keep = torch.where(positive, d > 0, d < 0)  # zero entries never match
        mixed.add_(torch.where(keep, d, 0.0))
        if divisor is not None:
            divisor.add_(keep, alpha=w)
    if divisor is not None:
        divisor.masked_fill_(divisor.abs() < 1e-8, 1.0)
        mixed.div_(divisor)
    return mixed


def _magnitude(tv, i, numeric, params, generator, plan=None):
    return _sparsify.magnitude(tv, numeric["density"][i], bool(params["rescale"]), inplace=True, plan=plan)


def _magnitude_plan(tv, i, numeric):
    return _sparsify.trim_plan(tv, numeric["density"][i], consume=True)


def _random(tv, i, numeric, params, generator):
    return _sparsify.bernoulli(tv, numeric["density"][i], bool(params["rescale"]), generator, inplace=True)


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
PREPARERS: dict[str, Preparer] = {"magnitude": _magnitude_plan}
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
    prepare = PREPARERS.get(sparsification or "")

    def func(tensors, base, model_params, params, generator):
        return merge_task_vectors(
            name,
            tensors,
            base,
            model_params,
            params,
            generator,
            sparsify=sparsify,
            consensus=consensus,
            prepare=prepare,
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
