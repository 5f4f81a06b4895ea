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

from npdecode.merge.methods import _mixing, _sparsify
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
    sparsification: str | None,
    consensus: bool,
) -> torch.Tensor:
    """The merged tensor of the formula in the module docstring (shape and dtype of ``base``).

    Without sparsification, with DARE's (elementwise) or Breadcrumbs' without rescaling
    (planned first, model by model, on a throw-away task vector: two radix selects, a sort only
    for ties), each block of entries goes through task vector, drop, weight, sign election and
    mean in one pass over the inputs, with block-sized buffers (see ``_mixing``): the only
    full-size tensor is the output. Otherwise (TIES, DELLA, rescaled Breadcrumbs) each model's
    task vector is made and sparsified whole, in place, then mixed block by block, the result
    written over the first one; magnitude trimming is planned for every model before any task
    vector is kept, so that its occasional full sort (ties at the cut) never coexists with the
    other task vectors. (Streaming TIES the same way was tried: no lower peak, since the sort
    for ties at the cut dominates it, and slower.)
    """
    base = require_base(method, base)
    others, per_model = split_base(tensors, base, model_params)
    check_shapes(method, others, base)
    if not others:
        return base.clone()
    weights = scalars(method, per_model, "weight", len(others))
    numeric = {k: scalars(method, per_model, k, len(others)) for k in per_model if k != "weight"}
    size = _mixing.block_size(base.device)
    mixer = _mixing.BlockMixer(
        weights,
        consensus=consensus,
        normalize=bool(params["normalize"]),
        lam=float(params["lambda"]),
        dtype=base.dtype,
        device=base.device,
        size=size,
    )
    base_flat = base.reshape(-1)
    rescale = bool(params["rescale"])
    if sparsification in STREAMED or (sparsification == "magnitude_outliers" and not rescale):
        densities = numeric["density"] if sparsification == "random" else None
        bands = None
        if sparsification == "magnitude_outliers":  # planned on throw-away task vectors, one at a time
            bands = [
                _sparsify.outlier_plan(_task_vector(x, base), numeric["density"][i], numeric["gamma"][i], consume=True)
                for i, x in enumerate(others)
            ]
        stream = _DeltaStream(others, base_flat, weights, densities, rescale, generator, size, bands)
        out = torch.empty(base.shape, dtype=base.dtype, device=base.device)
        out_flat = out.view(-1)
        for start, stop in _mixing.blocks(base.numel(), size):
            mixer.mix(stream.block(start, stop), base_flat[start:stop], out_flat[start:stop])
        return out
    deltas = _sparsified_deltas(others, base, weights, numeric, params, generator, sparsification)
    flats = [d.view(-1) for d in deltas]
    for start, stop in _mixing.blocks(base.numel(), size):
        mixer.mix([f[start:stop] for f in flats], base_flat[start:stop], flats[0][start:stop])
    return deltas[0]


class _DeltaStream:
    """Weighted task vectors ``w_i * drop(x_i - base)`` of one block at a time, in reused
    buffers; ``drop`` is DARE's (``densities`` given: one generator per model, float32 draws,
    see ``_sparsify.drop_random``), Breadcrumbs' (``bands``: ``_sparsify.BandPlan`` per model,
    made beforehand) or none."""

    def __init__(self, xs, base_flat, weights, densities, rescale, generator, size, bands=None):
        self.xs = [x.reshape(-1) for x in xs]
        self.base = base_flat
        self.weights = weights
        self.densities = densities
        self.rescale = rescale
        self.bands = bands
        self.buffers = [torch.empty(size, dtype=base_flat.dtype, device=base_flat.device) for _ in xs]
        if densities is not None:
            self.generators = _sparsify.model_generators(generator, len(xs), base_flat.device)
            self.u = torch.empty(size, dtype=torch.float32, device=base_flat.device)

    def block(self, start: int, stop: int) -> list[torch.Tensor]:
        m = stop - start
        out = []
        for i, x in enumerate(self.xs):
            d = torch.sub(x[start:stop], self.base[start:stop], out=self.buffers[i][:m])
            p = self.densities[i] if self.densities is not None else 1.0
            if p <= 0:
                d.zero_()
            elif p < 1:
                u = torch.rand(m, generator=self.generators[i], dtype=torch.float32, device=d.device, out=self.u[:m])
                _sparsify.drop_random(d, u, p, self.rescale)
            if self.bands is not None and self.bands[i] is not None:
                _sparsify.apply_band(d, self.bands[i], start)
            out.append(d.mul_(self.weights[i]))
        return out


def _sparsified_deltas(others, base, weights, numeric, params, generator, sparsification) -> list[torch.Tensor]:
    """Each model's whole task vector, sparsified in place and weighted."""
    sparsify = SPARSIFIERS[sparsification]
    prepare = PREPARERS.get(sparsification)
    plans = [prepare(_task_vector(x, base), i, numeric) for i, x in enumerate(others)] if prepare else None
    deltas = []
    for i, x in enumerate(others):
        tv = _task_vector(x, base)
        extra = {"plan": plans[i]} if plans else {}
        sparse = sparsify(tv, i, numeric, params, generator, **extra)
        if sparse is not tv:
            tv.copy_(sparse)
        del sparse
        deltas.append(tv.mul_(weights[i]))
    return deltas


def _task_vector(x: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """``x - base`` as a new contiguous tensor of ``base``'s dtype."""
    return torch.sub(x, base, out=torch.empty(base.shape, dtype=base.dtype, device=base.device))


def _magnitude(tv, i, numeric, params, generator, plan=None):
    return _sparsify.magnitude(tv, numeric["density"][i], bool(params["rescale"]), inplace=True, plan=plan)


def _magnitude_plan(tv, i, numeric):
    return _sparsify.trim_plan(tv, numeric["density"][i], consume=True)


def _outliers(tv, i, numeric, params, generator):
    return _sparsify.magnitude_outliers(tv, numeric["density"][i], numeric["gamma"][i], bool(params["rescale"]))


def _della(tv, i, numeric, params, generator):
    return _sparsify.rank_magnitude(
        tv, numeric["density"][i], numeric["epsilon"][i], bool(params["rescale"]), generator
    )


SPARSIFIERS: dict[str, Sparsifier] = {
    "magnitude": _magnitude,
    "magnitude_outliers": _outliers,
    "rank_magnitude": _della,
}
PREPARERS: dict[str, Preparer] = {"magnitude": _magnitude_plan}
# elementwise sparsifications: streamed block by block with the mix (None: no sparsification)
STREAMED = (None, "random")
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

    def func(tensors, base, model_params, params, generator):
        return merge_task_vectors(
            name,
            tensors,
            base,
            model_params,
            params,
            generator,
            sparsification=sparsification,
            consensus=consensus,
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
