"""Magnitude trimming (TIES) and DARE pruning: MergeKit's argsort tie-break, radix select, and the
block-wise task-vector merge (block boundaries must not change a single value)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from npdecode.merge.methods import _mixing, _sparsify
from tests.merge import method_refs as ref
from tests.merge.test_methods import _dare_uniforms, close, make_inputs, run


def argsort_trim(tv: torch.Tensor, density: float) -> torch.Tensor:
    """Reference for MergeKit's trim: the first ``int(density * n)`` entries of
    ``argsort(|tv|, descending=True)``, magnitudes in float32 (float64 kept as is)."""
    k = int(density * tv.numel())
    magnitudes = tv.abs().reshape(-1)
    if magnitudes.dtype != torch.float64:
        magnitudes = magnitudes.float()
    keep = torch.zeros(tv.numel(), dtype=torch.bool)
    keep[torch.argsort(magnitudes, descending=True)[:k]] = True
    return tv * keep.view(tv.shape)


def crafted_ties(n: int = 5000, seed: int = 0) -> torch.Tensor:
    """Few distinct magnitudes, so that many entries tie at any cut."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-6, 7, (n,), generator=g).float() / 4


def test_crafted_ties_follow_argsort_not_index_order():
    tv = crafted_ties()
    density = 0.5
    k = int(density * tv.numel())
    got = _sparsify.magnitude(tv, density)
    assert torch.equal(got != 0, argsort_trim(tv, density) != 0)
    assert torch.equal(got, argsort_trim(tv, density))
    assert int((got != 0).sum()) == k
    # the crafted input really exercises the tie-break: keeping tied entries in index order
    # (a stable sort) or by topk would pick another set
    stable = torch.from_numpy(ref.trim_magnitude(tv.double().numpy(), density)).float()
    assert not torch.equal(got != 0, stable != 0)
    topk = torch.zeros(tv.numel(), dtype=torch.bool)
    topk[torch.topk(tv.abs(), k, sorted=False).indices] = True
    assert not torch.equal(got != 0, topk)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("density", [0.1, 0.5, 0.93])
@pytest.mark.parametrize("kind", ["distinct", "ties", "zeros", "nan"])
def test_magnitude_equals_argsort_reference(dtype, density, kind, monkeypatch):
    monkeypatch.setattr(_sparsify, "BLOCK", 333)  # several blocks per pass
    g = torch.Generator().manual_seed(3)
    if kind == "distinct":
        tv = torch.randn(40, 61, generator=g, dtype=torch.float64).to(dtype)
    elif kind == "ties":
        tv = (torch.randint(-9, 10, (40, 61), generator=g).double() / 8).to(dtype)
    elif kind == "nan":  # NaN magnitudes rank first in a descending argsort
        tv = (torch.randint(-9, 10, (40, 61), generator=g).double() / 8).to(dtype)
        tv.view(-1)[::97] = float("nan")
    else:  # mostly zeros: the cut can be zero itself
        tv = (torch.randn(40, 61, generator=g, dtype=torch.float64) * (torch.rand(40, 61, generator=g) < 0.05)).to(
            dtype
        )
    got, want = _sparsify.magnitude(tv, density), argsort_trim(tv, density)
    assert torch.equal(got.isnan(), want.isnan())
    assert torch.equal(got.nan_to_num(), want.nan_to_num())


def test_magnitude_inplace_and_copy():
    tv = crafted_ties(2000, seed=5)
    original = tv.clone()
    copy = _sparsify.magnitude(tv, 0.3)
    assert torch.equal(tv, original) and copy is not tv
    same = _sparsify.magnitude(tv, 0.3, inplace=True)
    assert same is tv and torch.equal(tv, copy)
    strided = original.clone().view(40, 50).t()  # not contiguous: trimmed through a copy
    assert torch.equal(_sparsify.magnitude(strided, 0.3, inplace=True), argsort_trim(strided, 0.3))


def test_magnitude_rescale_preserves_l1():
    tv = crafted_ties(3000, seed=2).double()
    got = _sparsify.magnitude(tv, 0.4, rescale=True)
    kept = argsort_trim(tv, 0.4)
    assert torch.allclose(got, kept * (tv.abs().sum() / kept.abs().sum()), rtol=1e-12, atol=0)


def test_kth_largest_bits_counts():
    tv = crafted_ties(1000, seed=9)
    for k in (1, 17, 500, 999, 1000):
        cut, above, equal = _sparsify._kth_largest_bits(tv, k)
        value = torch.tensor([cut], dtype=torch.int32).view(torch.float32).item()
        assert value == torch.sort(tv.abs(), descending=True).values[k - 1].item()
        assert above == int((tv.abs() > value).sum()) and equal == int((tv.abs() == value).sum())


@pytest.mark.parametrize("rescale", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_drop_random_equals_the_mask_formula(rescale, dtype):
    g = torch.Generator().manual_seed(11)
    d = torch.randn(4000, generator=g, dtype=dtype)
    u = torch.rand(4000, generator=g, dtype=torch.float32)
    density = 0.35
    u[:50] = density  # u == density exactly: dropped (kept only where u < density)
    u[50:60] = torch.nextafter(torch.tensor(density, dtype=torch.float32), torch.tensor(0.0))
    want = torch.where(u < density, d, 0.0)
    got = _sparsify.drop_random(d.clone(), u.clone(), density, rescale)
    assert torch.equal(got, want / density if rescale else want)
    assert not got[:50].any() and got[50:60].ne(0).all()


def test_model_generators_are_seeded_from_the_task_generator():
    seeds = torch.randint(0, 2**62, (3,), generator=torch.Generator().manual_seed(5)).tolist()
    gens = _sparsify.model_generators(torch.Generator().manual_seed(5), 3, torch.device("cpu"))
    for seed, gen in zip(seeds, gens):
        assert torch.equal(torch.rand(10, generator=gen), torch.rand(10, generator=torch.Generator().manual_seed(seed)))
    assert len(set(seeds)) == 3


@pytest.mark.parametrize("block", [1, 7, 1 << 20])
def test_ties_engine_with_crafted_ties_and_any_block_size(block, monkeypatch):
    """End to end through the registered method: argsort tie-break per model, then sign
    election and disjoint mean, identical whatever the block size."""
    monkeypatch.setattr(_sparsify, "BLOCK", block)
    monkeypatch.setattr(_mixing, "CPU_BLOCK", block)
    g = torch.Generator().manual_seed(4)
    base = torch.randn(12, 10, generator=g, dtype=torch.float64).numpy()
    xs = [base + (torch.randint(-3, 4, (12, 10), generator=g).double() / 4).numpy() for _ in range(3)]
    ws, ds = [0.5, 1.0, 0.8], [0.4, 0.6, 0.5]
    got = run("ties", xs, base, {"weight": ws, "density": ds}, {"lambda": 0.9})
    tvs = [argsort_trim(torch.from_numpy(x - base), d).numpy() for x, d in zip(xs, ds)]
    close(got, ref.task_vectors_merge(base, tvs, ws, True, True, 0.9))


@pytest.mark.parametrize("name,consensus", [("dare_linear", False), ("dare_ties", True)])
@pytest.mark.parametrize("block", [1, 5, 1 << 15])
def test_dare_engine_any_block_size(name, consensus, block, monkeypatch):
    """Task vector, drop, weight and mix run block by block: the draws (one generator per
    model) and every value are those of whole-tensor references whatever the block size."""
    monkeypatch.setattr(_mixing, "CPU_BLOCK", block)
    base, xs = make_inputs(3)
    ws, ds = [0.6, 1.0, 0.4], [0.5, 0.3, 0.8]
    got = run(name, xs, base, {"weight": ws, "density": ds}, {"normalize": True}, torch.Generator().manual_seed(7))
    us = _dare_uniforms(7, 3, base.shape)
    tvs = [ref.dare_prune(x - base, d, u, True) for x, d, u in zip(xs, ds, us)]
    close(got, ref.task_vectors_merge(base, tvs, ws, consensus, True))
    assert np.isfinite(got).all()


def test_trim_plan_consumed_or_not_gives_the_same_trim():
    """The engine plans each trim on a throw-away task vector (``consume``), then applies it."""
    tv = crafted_ties(3000, seed=8)
    plan = _sparsify.trim_plan(tv.clone(), 0.45, consume=True)
    assert plan.surplus is not None  # ties straddle the cut here: the sort path ran
    assert torch.equal(_sparsify.magnitude(tv, 0.45, plan=plan), argsort_trim(tv, 0.45))
    assert _sparsify.trim_plan(tv, 1.0) is None
    assert torch.equal(_sparsify.magnitude(tv, 0.0001), torch.zeros_like(tv))  # int(0.3) == 0 kept


def ascending_band(tv: torch.Tensor, density: float, gamma: float) -> torch.Tensor:
    """Reference for MergeKit's Breadcrumbs trim: positions ``[n_bot, n_bot + k)`` of
    ``sort(|tv|)`` (ascending; float32 magnitudes, float64 kept as is)."""
    n = tv.numel()
    k = int(density * n)
    n_bot = max(0, n - k - int(gamma * n))
    magnitudes = tv.abs().reshape(-1)
    if magnitudes.dtype != torch.float64:
        magnitudes = magnitudes.float()
    keep = torch.zeros(n, dtype=torch.bool)
    keep[torch.sort(magnitudes).indices[n_bot : n_bot + k]] = True
    return tv * keep.view(tv.shape)


@pytest.mark.parametrize("kind", ["ties", "distinct", "zeros"])
@pytest.mark.parametrize("density,gamma", [(0.5, 0.05), (0.3, 0.2), (0.9, 0.2), (0.02, 0.0)])
def test_breadcrumbs_band_equals_the_ascending_sort(kind, density, gamma, monkeypatch):
    monkeypatch.setattr(_sparsify, "BLOCK", 333)
    g = torch.Generator().manual_seed(21)
    if kind == "ties":
        tv = crafted_ties(4000, seed=3)
    elif kind == "distinct":
        tv = torch.randn(4000, generator=g)
    else:
        tv = torch.randn(4000, generator=g) * (torch.rand(4000, generator=g) < 0.1)
    want = ascending_band(tv, density, gamma)
    assert torch.equal(_sparsify.magnitude_outliers(tv, density, gamma), want)
    plan = _sparsify.outlier_plan(tv.clone(), density, gamma)
    if kind == "ties":
        assert plan.surplus is not None  # the crafted ties straddle an end: the sort ran
    if kind == "distinct":
        assert plan.surplus is None  # no ties: radix selects alone


@pytest.mark.parametrize("block", [1, 7, 1 << 15])
@pytest.mark.parametrize("name,consensus", [("breadcrumbs", False), ("breadcrumbs_ties", True)])
def test_breadcrumbs_engine_with_crafted_ties_any_block_size(block, name, consensus, monkeypatch):
    """Planned band, then task vector, trim, weight and mix block by block: the values of
    whole-tensor references with MergeKit's tie-break, whatever the block size."""
    monkeypatch.setattr(_mixing, "CPU_BLOCK", block)
    g = torch.Generator().manual_seed(5)
    base = torch.randn(12, 10, generator=g, dtype=torch.float64).numpy()
    xs = [base + (torch.randint(-3, 4, (12, 10), generator=g).double() / 4).numpy() for _ in range(2)]
    ws, ds, gs = [0.5, 1.0], [0.4, 0.6], [0.1, 0.05]
    got = run(name, xs, base, {"weight": ws, "density": ds, "gamma": gs}, {"normalize": True})
    tvs = [ascending_band(torch.from_numpy(x - base), d, gm).numpy() for x, d, gm in zip(xs, ds, gs)]
    close(got, ref.task_vectors_merge(base, tvs, ws, consensus, True))


def test_breadcrumbs_band_follows_the_float_sort_on_large_tensors():
    """Above some size torch sorts integers ascending with another algorithm (another order
    among ties) than floats: the band must come from the float sort, as MergeKit's."""
    g = torch.Generator().manual_seed(1)
    tv = torch.randint(-40, 41, (300_000,), generator=g).float() / 64
    for density, gamma in ((0.5, 0.01), (0.3, 0.2)):
        assert torch.equal(_sparsify.magnitude_outliers(tv, density, gamma), ascending_band(tv, density, gamma))
