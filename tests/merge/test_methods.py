"""Merge methods against float64 references written from their formulas (tests/merge/method_refs)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from npdecode.errors import NpdecodeError
from npdecode.merge.registry import get_method
from tests.merge import method_refs as ref

GTA_GLOBALS = {"int8_mask": False, "normalize": True, "lambda": 1.0, "rescale": False}


def make_inputs(n: int, shape=(6, 8), seed=0, scale=0.3):
    """A float64 base and ``n`` models = base + random deltas (numpy arrays)."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=shape)
    return base, [base + scale * rng.normal(size=shape) for _ in range(n)]


def run(name, xs, base=None, model_params=None, params=None, generator=None, base_listed=False):
    """Call method ``name`` on numpy inputs in float64; the base is listed first when asked."""
    method = get_method(name)
    b = torch.from_numpy(base) if base is not None else None
    tensors = [torch.from_numpy(x) for x in xs]
    model_params = dict(model_params or {})
    if base_listed:
        tensors = [b, *tensors]
        model_params = {k: [None, *v] for k, v in model_params.items()}
    full = {k: v for k, v in method.global_params.items()}
    full.update(params or {})
    per_model = {k: [d] * len(tensors) for k, d in method.tensor_params.items()}
    per_model.update(model_params)
    out = method.func(tensors, b, per_model, full, generator)
    assert out.dtype == torch.float64 and tuple(out.shape) == xs[0].shape
    return out.numpy()


def close(a, b, tol=1e-10):
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


# --- deterministic methods vs references ---------------------------------------------------


@pytest.mark.parametrize("normalize", [True, False])
def test_linear(normalize):
    _, xs = make_inputs(3)
    ws = [0.2, 0.5, 1.1]
    close(
        run("linear", xs, model_params={"weight": ws}, params={"normalize": normalize}),
        ref.linear(xs, ws, normalize),
    )


@pytest.mark.parametrize("t", [0.0, 0.3, 0.75, 1.0])
def test_slerp(t):
    base, (x,) = make_inputs(1, scale=2.0)
    for listed in (True, False):
        close(run("slerp", [x], base, params={"t": t}, base_listed=listed), ref.slerp(t, base, x))


def test_slerp_colinear_falls_back_to_lerp():
    base = np.linspace(1, 2, 12).reshape(3, 4)
    x = 3.0 * base  # same direction: cos = 1
    close(run("slerp", [x], base, params={"t": 0.4}), 0.6 * base + 0.4 * x)


@pytest.mark.parametrize("flatten,row_wise", [(True, False), (False, False), (False, True)])
@pytest.mark.parametrize("with_base", [True, False])
def test_nuslerp(flatten, row_wise, with_base):
    base, (x0, x1) = make_inputs(2, scale=1.0)
    got = run(
        "nuslerp",
        [x0, x1],
        base if with_base else None,
        model_params={"weight": [0.3, 0.9]},
        params={"nuslerp_flatten": flatten, "nuslerp_row_wise": row_wise},
    )
    close(got, ref.nuslerp(0.3, 0.9, x0, x1, base if with_base else None, flatten, row_wise))


@pytest.mark.parametrize("with_base", [True, False])
def test_multislerp(with_base):
    base, xs = make_inputs(3, scale=1.0)
    ws = [0.5, 1.0, 2.0]
    b = base if with_base else None
    close(run("multislerp", xs, b, model_params={"weight": ws}), ref.multislerp(xs, ws, b))


def test_karcher():
    _, xs = make_inputs(3, scale=1.0)
    close(run("karcher", xs, params={"max_iter": 50, "tol": 1e-9}), ref.karcher(xs, 50, 1e-9), 1e-9)
    close(run("karcher", xs), ref.karcher(xs))


def test_karcher_is_the_fixed_point_on_the_sphere():
    """At the Karcher mean the weighted log maps sum to zero."""
    _, xs = make_inputs(4, scale=1.0, seed=3)
    out = run("karcher", xs, params={"max_iter": 200, "tol": 1e-12}).ravel()
    u = out / np.linalg.norm(out)
    grad = np.zeros_like(u)
    for x in xs:
        v = x.ravel() / np.linalg.norm(x)
        c = float(np.clip(u @ v, -1, 1))
        theta = np.arccos(c)
        grad += (v - c * u) * theta / np.sin(theta)
    assert np.linalg.norm(grad) < 1e-8
    close(np.linalg.norm(out), np.mean([np.linalg.norm(x) for x in xs]))


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("lam", [1.0, 0.7])
def test_task_arithmetic(normalize, lam):
    base, xs = make_inputs(3)
    ws = [0.4, 0.9, -0.3]
    got = run("task_arithmetic", xs, base, {"weight": ws}, {"normalize": normalize, "lambda": lam}, base_listed=True)
    close(got, ref.task_vectors_merge(base, [x - base for x in xs], ws, False, normalize, lam))


@pytest.mark.parametrize("density", [1.0, 0.5, 0.2])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("int8_mask", [True, False])
def test_ties(density, normalize, int8_mask):
    base, xs = make_inputs(3)
    ws, ds = [0.5, 1.0, 0.8], [density, min(1.0, density + 0.1), density]
    params = {"normalize": normalize, "int8_mask": int8_mask, "lambda": 0.9}
    got = run("ties", xs, base, {"weight": ws, "density": ds}, params)
    tvs = [ref.trim_magnitude(x - base, d) for x, d in zip(xs, ds)]
    close(got, ref.task_vectors_merge(base, tvs, ws, True, normalize, 0.9))


def test_ties_rescale_preserves_l1_of_each_task_vector():
    base, (x,) = make_inputs(1)
    got = run("ties", [x], base, {"weight": [1.0], "density": [0.3]}, {"rescale": True, "normalize": False})
    tv = x - base
    close(np.abs(got - base).sum(), np.abs(tv).sum())
    kept = ref.trim_magnitude(tv, 0.3)
    close(got - base, kept * np.abs(tv).sum() / np.abs(kept).sum())


@pytest.mark.parametrize("name,consensus", [("breadcrumbs", False), ("breadcrumbs_ties", True)])
@pytest.mark.parametrize("density,gamma", [(0.9, 0.01), (0.6, 0.1), (0.5, 0.7), (1.0, 0.1)])
def test_breadcrumbs(name, consensus, density, gamma):
    base, xs = make_inputs(2, shape=(10, 10))
    ws = [0.7, 1.2]
    got = run(name, xs, base, {"weight": ws, "density": [density] * 2, "gamma": [gamma] * 2}, {"normalize": True})
    tvs = [ref.breadcrumbs_prune(x - base, density, gamma) for x in xs]
    close(got, ref.task_vectors_merge(base, tvs, ws, consensus, True))
    if density < 1:  # exactly int(density * n) entries of each task vector survive
        single = run(name, xs[:1], base, {"weight": [1.0], "density": [density], "gamma": [gamma]})
        assert np.count_nonzero(single - base) == int(density * 100)


def _uniforms(seed, count, shape):
    """DELLA's draws: ``count`` float32 ``rand(shape)`` in a row from one seeded generator."""
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(shape, generator=g, dtype=torch.float32).double().numpy() for _ in range(count)]


def _dare_uniforms(seed, count, shape):
    """DARE's draws: ``count`` int64 seeds in [0, 2**62) from the seeded generator, then one
    generator per model, each drawing one float32 ``rand(shape)``."""
    seeds = torch.randint(0, 2**62, (count,), generator=torch.Generator().manual_seed(seed))
    return [
        torch.rand(shape, generator=torch.Generator().manual_seed(int(s)), dtype=torch.float32).double().numpy()
        for s in seeds
    ]


@pytest.mark.parametrize("name,consensus", [("dare_linear", False), ("dare_ties", True)])
@pytest.mark.parametrize("rescale", [True, False])
def test_dare_matches_reference_with_same_draws(name, consensus, rescale):
    base, xs = make_inputs(3)
    ws, ds = [0.6, 1.0, 0.4], [0.5, 0.3, 0.8]
    params = {"rescale": rescale, "normalize": True}
    got = run(name, xs, base, {"weight": ws, "density": ds}, params, torch.Generator().manual_seed(7))
    us = _dare_uniforms(7, 3, base.shape)
    tvs = [ref.dare_prune(x - base, d, u, rescale) for x, d, u in zip(xs, ds, us)]
    close(got, ref.task_vectors_merge(base, tvs, ws, consensus, True))


def test_dare_keeps_exactly_the_masked_entries_rescaled():
    base, (x,) = make_inputs(1, shape=(200, 50), seed=4)
    density = 0.3
    got = run(
        "dare_linear",
        [x],
        base,
        {"weight": [1.0], "density": [density]},
        None,
        torch.Generator().manual_seed(1),
    )
    tv = x - base
    kept = got != base
    close(got[kept] - base[kept], tv[kept] / density)  # kept entries: exactly tv / density
    assert np.all(got[~kept] == base[~kept])  # dropped entries: exactly the base
    assert abs(kept.mean() - density) < 0.02  # 10,000 draws: 5 sigma ~ 0.023
    again = run(
        "dare_linear",
        [x],
        base,
        {"weight": [1.0], "density": [density]},
        None,
        torch.Generator().manual_seed(1),
    )
    other = run(
        "dare_linear",
        [x],
        base,
        {"weight": [1.0], "density": [density]},
        None,
        torch.Generator().manual_seed(2),
    )
    assert np.array_equal(got, again) and not np.array_equal(got, other)


def test_dare_same_mask_in_float32_and_float64():
    base, (x,) = make_inputs(1, shape=(30, 30))
    method = get_method("dare_ties")
    outs = []
    for dtype in (torch.float32, torch.float64):
        b, t = torch.from_numpy(base).to(dtype), torch.from_numpy(x).to(dtype)
        params = dict(method.global_params)
        out = method.func([t], b, {"weight": [1.0], "density": [0.4]}, params, torch.Generator().manual_seed(3))
        outs.append((out != b).numpy())
    assert np.array_equal(*outs)


@pytest.mark.parametrize("name,consensus", [("della", True), ("della_linear", False)])
def test_della_matches_reference_with_same_draws(name, consensus):
    base, xs = make_inputs(2, shape=(5, 9))
    ws, ds, es = [1.0, 0.5], [0.5, 0.4], [0.2, 0.1]
    got = run(
        name,
        xs,
        base,
        {"weight": ws, "density": ds, "epsilon": es},
        {"normalize": True},
        torch.Generator().manual_seed(11),
    )
    us = _uniforms(11, 2, base.shape)
    tvs = [ref.della_prune(x - base, d, e, u) for x, d, e, u in zip(xs, ds, es, us)]
    close(got, ref.task_vectors_merge(base, tvs, ws, consensus, True))


def test_della_keep_rate_follows_magnitude_rank():
    """Column j of rows sorted by magnitude is kept with probability density - eps + 2 eps j/(w-1)."""
    rows, width, density, eps = 4000, 5, 0.5, 0.3
    tv = np.tile(np.arange(1, width + 1, dtype=np.float64), (rows, 1))  # rank == column
    base = np.zeros_like(tv)
    got = run(
        "della_linear",
        [tv],
        base,
        {"weight": [1.0], "density": [density], "epsilon": [eps]},
        None,
        torch.Generator().manual_seed(5),
    )
    rate = (got != 0).mean(axis=0)
    expected = density - eps + 2 * eps * np.arange(width) / (width - 1)
    assert np.all(np.abs(rate - expected) < 0.04)  # 4000 draws per column: 5 sigma ~ 0.04
    kept = got != 0
    close(got[kept], (tv / np.broadcast_to(expected, tv.shape))[kept])  # rescaled by 1/p


def test_della_rejects_probabilities_outside_unit_interval():
    base, (x,) = make_inputs(1)
    with pytest.raises(NpdecodeError, match="epsilon"):
        run("della", [x], base, {"weight": [1.0], "density": [0.2], "epsilon": [0.3]})


@pytest.mark.parametrize("topk", [1.0, 0.5, 0.1])
def test_sce(topk):
    base, xs = make_inputs(3)
    close(run("sce", xs, base, params={"select_topk": topk}, base_listed=True), ref.sce(base, xs, topk))


@pytest.mark.parametrize("filter_wise", [False, True])
def test_model_stock(filter_wise):
    base, xs = make_inputs(3)
    close(
        run("model_stock", xs, base, params={"filter_wise": filter_wise}),
        ref.model_stock(base, xs, filter_wise),
    )


def test_model_stock_two_models_matches_paper_ratio():
    """N=2: t = 2 cos / (1 + cos), cos the angle between the two task vectors."""
    base, (a, b) = make_inputs(2)
    da, db = (a - base).ravel(), (b - base).ravel()
    c = da @ db / (np.linalg.norm(da) * np.linalg.norm(db))
    t = 2 * c / (1 + c)
    close(run("model_stock", [a, b], base), t * (a + b) / 2 + (1 - t) * base)


@pytest.mark.parametrize("t", [0.0, 0.05, 0.5, 10.0])
def test_nearswap(t):
    base, (x,) = make_inputs(1)
    x[0, 0] = base[0, 0]  # an equal entry
    close(run("nearswap", [x], base, params={"t": t}, base_listed=True), ref.nearswap(base, x, t))


def test_arcee_fusion():
    base, (x,) = make_inputs(1, shape=(12, 16), scale=1.0)
    got = run("arcee_fusion", [x], base)
    close(got, ref.arcee_fusion(base, x))
    taken = got == x
    assert 0 < taken.sum() < taken.size  # some but not all entries fused
    assert np.all(got[~taken] == base[~taken])


def _sparse_models(n, shape=(8, 8), seed=0):
    """RL-style sparse task vectors with overlaps, plus tiny sub-epsilon noise."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=shape)
    xs = []
    for _ in range(n):
        delta = rng.normal(size=shape) * (rng.random(shape) < 0.4) + 1e-7 * rng.normal(size=shape)
        xs.append(base + delta)
    return base, xs


def test_ram():
    base, xs = _sparse_models(3)
    close(run("ram", xs, base, base_listed=True), ref.ram(base, xs))


@pytest.mark.parametrize("r,alpha", [(0.1, 0.2), (0.5, 5.0)])
def test_ramplus_tl(r, alpha):
    base, xs = _sparse_models(3, seed=1)
    close(run("ramplus_tl", xs, base, params={"r": r, "alpha": alpha}), ref.ram(base, xs, 1e-5, r, alpha))


def test_ramplus_scales_only_unique_entries():
    base, xs = _sparse_models(2, seed=2)
    plain = run("ram", xs, base)
    plus = run("ramplus_tl", xs, base, params={"r": 0.5, "alpha": 5.0})
    active = np.stack([np.abs(x - base) > 1e-5 for x in xs])
    shared = active.sum(0) > 1
    close(plus[shared], plain[shared])
    unique = active.sum(0) == 1
    assert np.all(np.abs(plus[unique] - base[unique]) > np.abs(plain[unique] - base[unique]))


@pytest.mark.parametrize("scale", [None, 0.5])
def test_passthrough(scale):
    _, (x,) = make_inputs(1)
    close(run("passthrough", [x], model_params={"scale": [scale]}), x * (1.0 if scale is None else scale))
