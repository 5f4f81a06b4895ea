"""The block mixer (float arithmetic only) against the bool-mask formulation of TIES election and
disjoint mean, bit for bit in the computation dtype: MergeKit parity depends on every rounding."""

from __future__ import annotations

import pytest
import torch

from npdecode.merge.methods._mixing import BlockMixer


def mask_reference(ds, weights, base, consensus, normalize, lam):
    """The formulation of ``_task_arithmetic``'s docstring with bool masks, in ``base``'s dtype
    and MergeKit's order of operations (sums over models in model order)."""
    if not consensus:
        mixed = torch.stack(ds).sum(dim=0)
        total = sum(weights)
        if normalize and abs(total) >= 1e-8:
            mixed = mixed / total
    else:
        positive = torch.stack(ds).sum(dim=0) >= 0
        mixed = torch.zeros_like(base)
        divisor = torch.zeros_like(base)
        for d, w in zip(ds, weights):
            keep = torch.where(positive, d > 0, d < 0)
            mixed = mixed + torch.where(keep, d, 0.0)
            divisor = divisor + keep.to(base.dtype) * w
        if normalize:
            divisor[divisor.abs() < 1e-8] = 1.0
            mixed = mixed / divisor
    return mixed * lam + base if lam != 1.0 else mixed + base


def crafted(n, m, seed, dtype):
    """Task vectors on a coarse grid (exact cancellations, zero sums, zeros) mixed with
    ordinary values of many magnitudes."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randint(-3, 4, (n, m), generator=g).to(dtype) / 4
    fine = torch.randn(n, m, generator=g, dtype=torch.float64).to(dtype) * 10.0 ** torch.randint(
        -4, 2, (n, m), generator=g
    )
    pick = torch.rand(n, m, generator=g) < 0.5
    ds = torch.where(pick, coarse, fine)
    if n >= 2:
        ds[1, : m // 8] = -ds[0, : m // 8]  # exact cancellation: a +0.0 sum, the majority is +
    base = torch.randn(m, generator=g, dtype=torch.float64).to(dtype)
    return list(ds), base


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("consensus", [True, False])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("weights_kind", ["positive", "mixed", "cancelling"])
@pytest.mark.parametrize("lam", [1.0, 0.7])
def test_mixer_equals_mask_formulation_bit_for_bit(dtype, n, consensus, normalize, weights_kind, lam):
    m = 3000
    ds, base = crafted(n, m, seed=n + 10 * int(consensus), dtype=dtype)
    weights = {"positive": [0.3, 1.0, 0.45], "mixed": [0.5, -0.8, 0.3], "cancelling": [0.5, -0.5, 1.0]}[weights_kind][
        :n
    ]
    ds = [d * w for d, w in zip(ds, weights)]
    want = mask_reference(ds, weights, base, consensus, normalize, lam)
    mixer = BlockMixer(
        weights, consensus=consensus, normalize=normalize, lam=lam, dtype=dtype, device=torch.device("cpu"), size=1024
    )
    got = torch.empty_like(base)
    work = [d.clone() for d in ds]
    for start in range(0, m, 1024):  # blocks of the buffer size and a short last one
        stop = min(start + 1024, m)
        mixer.mix([w[start:stop] for w in work], base[start:stop], got[start:stop])
    assert torch.equal(got, want)


def test_mixer_may_write_over_its_first_input():
    ds, base = crafted(2, 500, seed=3, dtype=torch.float32)
    mixer = BlockMixer([1.0, 0.5], consensus=True, normalize=True, lam=1.0, dtype=torch.float32,
                       device=torch.device("cpu"), size=500)  # fmt: skip
    want = mask_reference(ds, [1.0, 0.5], base, True, True, 1.0)
    work = [d.clone() for d in ds]
    mixer.mix(work, base, work[0])
    assert torch.equal(work[0], want)


@pytest.mark.parametrize("block", [1, 7, 1 << 15])
@pytest.mark.parametrize("with_base", [True, False])
def test_flat_nuslerp_blocks_equal_the_whole_tensor_formula(block, with_base, monkeypatch):
    """nuslerp (flatten) streams the task vectors block by block; any block size gives the
    whole-tensor slerp of the task vectors, plus the base."""
    from npdecode.merge.methods import _mixing
    from npdecode.merge.methods._geometry import slerp_along
    from npdecode.merge.registry import get_method

    monkeypatch.setattr(_mixing, "CPU_BLOCK", block)
    g = torch.Generator().manual_seed(2)
    base = torch.randn(9, 13, generator=g, dtype=torch.float64)
    x0, x1 = (base + 0.3 * torch.randn(9, 13, generator=g, dtype=torch.float64) for _ in range(2))
    method = get_method("nuslerp")
    got = method.func([x0, x1], base if with_base else None, {"weight": [0.3, 0.9]}, dict(method.global_params), None)
    t = 0.9 / 1.2
    want = slerp_along(t, x0 - base, x1 - base, None) + base if with_base else slerp_along(t, x0, x1, None)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(got, torch.lerp(x0, x1, t))  # not colinear: really spherical


@pytest.mark.parametrize("block", [1, 7, 1 << 15])
@pytest.mark.parametrize("with_base", [True, False])
def test_multislerp_blocks_equal_the_float64_reference(block, with_base, monkeypatch):
    """multislerp streams its four passes block by block: any block size gives the reference."""
    from npdecode.merge.methods import _mixing
    from tests.merge import method_refs as ref
    from tests.merge.test_methods import make_inputs, run

    monkeypatch.setattr(_mixing, "CPU_BLOCK", block)
    base, xs = make_inputs(3, scale=1.0, seed=5)
    ws = [0.5, 1.0, 2.0]
    b = base if with_base else None
    np_got = run("multislerp", xs, b, model_params={"weight": ws})
    torch.testing.assert_close(
        torch.from_numpy(np_got), torch.from_numpy(ref.multislerp(xs, ws, b)), rtol=1e-10, atol=1e-10
    )


@pytest.mark.parametrize("block", [1, 7, 1 << 15])
def test_karcher_blocks_equal_the_float64_reference(block, monkeypatch):
    """karcher streams unit vectors and steps block by block: any block size gives the reference."""
    from npdecode.merge.methods import _mixing
    from tests.merge import method_refs as ref
    from tests.merge.test_methods import make_inputs, run

    monkeypatch.setattr(_mixing, "CPU_BLOCK", block)
    _, xs = make_inputs(3, scale=1.0, seed=6)
    got = run("karcher", xs, params={"max_iter": 30, "tol": 1e-9})
    torch.testing.assert_close(torch.from_numpy(got), torch.from_numpy(ref.karcher(xs, 30, 1e-9)), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("block", [1, 10, 1 << 20])
@pytest.mark.parametrize("name,consensus", [("della", True), ("della_linear", False)])
def test_della_row_chunks_equal_the_reference(block, name, consensus, monkeypatch):
    """DELLA runs over chunks of whole rows (about BLOCK entries): same draws, same values."""
    from npdecode.merge.methods import _sparsify
    from tests.merge import method_refs as ref
    from tests.merge.test_methods import _uniforms, make_inputs, run

    monkeypatch.setattr(_sparsify, "BLOCK", block)
    base, xs = make_inputs(2, shape=(7, 9), seed=8)
    ws, ds, es = [1.0, 0.5], [0.5, 0.4], [0.2, 0.1]
    got = run(name, xs, base, {"weight": ws, "density": ds, "epsilon": es}, {"normalize": True},
              torch.Generator().manual_seed(11))  # fmt: skip
    us = _uniforms(11, 2, base.shape)
    tvs = [ref.della_prune(x - base, d, e, u) for x, d, e, u in zip(xs, ds, es, us)]
    want = ref.task_vectors_merge(base, tvs, ws, consensus, True)
    torch.testing.assert_close(torch.from_numpy(got), torch.from_numpy(want), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("block", [1, 5, 1 << 15])
@pytest.mark.parametrize("filter_wise", [True, False])
def test_model_stock_blocks_equal_the_reference(block, filter_wise, monkeypatch):
    """model_stock sums dots over column blocks and writes rows in chunks: any block size
    gives the float64 reference."""
    from npdecode.merge.methods import _mixing
    from tests.merge import method_refs as ref
    from tests.merge.test_methods import make_inputs, run

    monkeypatch.setattr(_mixing, "CPU_BLOCK", block)
    base, xs = make_inputs(3, shape=(6, 11), seed=9)
    got = run("model_stock", xs, base, params={"filter_wise": filter_wise})
    want = ref.model_stock(base, xs, filter_wise)
    torch.testing.assert_close(torch.from_numpy(got), torch.from_numpy(want), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("block", [1, 7, 1 << 15])
@pytest.mark.parametrize("topk", [1.0, 0.6])
def test_sce_blocks_equal_the_reference(block, topk, monkeypatch):
    """SCE streams variance, energies and the erase/merge step block by block: any block size
    gives the float64 reference."""
    from npdecode.merge.methods import _mixing
    from tests.merge import method_refs as ref
    from tests.merge.test_methods import make_inputs, run

    monkeypatch.setattr(_mixing, "CPU_BLOCK", block)
    base, xs = make_inputs(3, shape=(8, 9), seed=12)
    got = run("sce", xs, base, params={"select_topk": topk})
    want = ref.sce(base, xs, topk)
    torch.testing.assert_close(torch.from_numpy(got), torch.from_numpy(want), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("block", [1, 7, 1 << 15])
@pytest.mark.parametrize("name", ["ram", "ramplus_tl"])
def test_ram_blocks_equal_the_reference(block, name, monkeypatch):
    """RAM / RAM+ count active entries and merge block by block: any block size gives the
    float64 reference (RAM+'s per-model scales come from counts over the whole tensor)."""
    from npdecode.merge.methods import _mixing
    from tests.merge import method_refs as ref
    from tests.merge.test_methods import make_inputs, run

    monkeypatch.setattr(_mixing, "CPU_BLOCK", block)
    base, xs = make_inputs(3, shape=(8, 9), seed=13)
    for x in xs:  # inactive entries (|d| <= epsilon), unique and shared ones
        x[::3] = base[::3]
    xs[0][1::4] = base[1::4]
    params = {"epsilon": 1e-5} if name == "ram" else {"epsilon": 1e-5, "r": 0.3, "alpha": 0.5}
    got = run(name, xs, base, params=params)
    want = ref.ram(base, xs, 1e-5) if name == "ram" else ref.ram(base, xs, 1e-5, r=0.3, alpha=0.5)
    torch.testing.assert_close(torch.from_numpy(got), torch.from_numpy(want), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("block", [1, 7, 1 << 15])
@pytest.mark.parametrize("shape", [(12, 10), (40,), (3, 4, 5)])
def test_arcee_fusion_row_chunks_equal_the_reference(block, shape, monkeypatch):
    """arcee_fusion computes importance in chunks of rows and its order statistics by radix
    select: any block size gives the float64 reference (median and quartiles exact)."""
    from npdecode.merge.methods import _mixing
    from tests.merge import method_refs as ref
    from tests.merge.test_methods import make_inputs, run

    monkeypatch.setattr(_mixing, "CPU_BLOCK", block)
    base, (x,) = make_inputs(1, shape=shape, seed=14, scale=1.0)
    got = run("arcee_fusion", [x], base)
    want = ref.arcee_fusion(base, x)
    torch.testing.assert_close(torch.from_numpy(got), torch.from_numpy(want), rtol=1e-12, atol=1e-12)
    if len(shape) > 1:
        assert (got == x).any() and (got == base).any()  # some entries taken, some kept


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kth_smallest_equals_kthvalue(dtype):
    from npdecode.merge.methods._select import kth_smallest as _kth_smallest

    g = torch.Generator().manual_seed(0)
    x = (torch.randn(5003, generator=g, dtype=torch.float64) * 10.0 ** torch.randint(-5, 3, (5003,), generator=g)).to(
        dtype
    )
    x[::7], x[::11], x[::13] = x[3], -0.0, 0.0  # duplicates and both zeros
    for k in (1, 2, 777, 2502, 5002, 5003):
        assert _kth_smallest(x, k).item() == torch.kthvalue(x, k).values.item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_top_k_mask_equals_topk_without_ties_and_takes_first_ties(dtype):
    from npdecode.merge.methods._select import top_k_mask

    g = torch.Generator().manual_seed(3)
    x = torch.rand(40, 51, generator=g, dtype=torch.float64).to(dtype)
    distinct = torch.unique(x).numel() == x.numel()
    for k in (0, 1, 17, 1020, 2039, 2040, 3000):
        got = top_k_mask(x, k)
        assert got.shape == x.shape and int(got.sum()) == min(k, x.numel())
        if distinct and 0 < k < x.numel():
            want = torch.zeros(x.numel(), dtype=torch.bool)
            want[torch.topk(x.reshape(-1), k).indices] = True
            assert torch.equal(got.reshape(-1), want)
    if dtype == torch.bfloat16:  # torch.topk path: ties broken as torch likes
        return
    ties = torch.tensor([0.5, 2.0, 0.5, 3.0, 0.5, 0.1], dtype=dtype)
    assert top_k_mask(ties, 3).tolist() == [True, True, False, True, False, False]  # first 0.5 in order
    assert top_k_mask(ties, 5).tolist() == [True, True, True, True, True, False]
    nan = torch.tensor([1.0, float("nan"), 0.5], dtype=dtype)
    assert top_k_mask(nan, 1).tolist() == [False, True, False]  # NaN ranks largest, as in torch.topk


@pytest.mark.parametrize("threads", [1, 2])
def test_cpu_merge_runs_ops_single_threaded_and_restores_torch_threads(threads, monkeypatch):
    """The executor runs every op on its calling thread during a CPU merge (workers included)
    and gives torch its thread count back afterwards."""
    from npdecode.merge import executor
    from npdecode.merge.api import merge_state_dicts

    seen = []
    compute = executor.compute_task

    def spy(plan, task, device):
        seen.append(torch.get_num_threads())
        return compute(plan, task, device)

    monkeypatch.setattr(executor, "compute_task", spy)
    g = torch.Generator().manual_seed(0)
    sds = {m: {f"w{i}": torch.randn(4, 3, generator=g) for i in range(4)} for m in ("a", "b")}
    before = torch.get_num_threads()
    out = merge_state_dicts({"merge_method": "linear", "models": [{"model": "a", "parameters": {"weight": 1.0}},
                                                                  {"model": "b", "parameters": {"weight": 1.0}}]},
                            sds, threads=threads)  # fmt: skip
    assert torch.get_num_threads() == before
    assert seen and set(seen) == {1}
    torch.testing.assert_close(out["w0"], (sds["a"]["w0"] + sds["b"]["w0"]) / 2)


@pytest.mark.parametrize("t", [0.0, 0.2, 0.7, 1.0])
def test_slerp_nearly_colinear_branch_against_float64(t):
    """Fine-tunes of one base are nearly parallel (cos > 0.9995): the linear fallback must put
    weight 1-t on v0 and t on v1 (a swapped t would pass every other test), and agree with an
    exact float64 slerp there, where lerp and slerp differ by far less than the gap between them."""
    import math

    import numpy as np

    from npdecode.merge.methods._geometry import slerp
    from tests.merge import method_refs as ref

    g = torch.Generator().manual_seed(0)
    v0 = torch.randn(64, 33, generator=g)
    v1 = v0 + 0.01 * torch.randn(64, 33, generator=g)
    a, b = v0.double().numpy(), v1.double().numpy()
    cos = float((a * b).sum() / (np.linalg.norm(a) * np.linalg.norm(b)))
    assert 0.9995 < cos < 1.0
    theta = math.acos(cos)
    exact = (math.sin((1 - t) * theta) * a + math.sin(t * theta) * b) / math.sin(theta)
    got = slerp(t, v0, v1).double().numpy()
    np.testing.assert_allclose(got, ref.slerp(t, a, b), atol=1e-6)
    np.testing.assert_allclose(got, exact, atol=1e-4)
    if 0 < t < 1 and t != 0.5:  # the swapped weights are measurably elsewhere
        assert np.abs(slerp(1 - t, v0, v1).double().numpy() - exact).max() > 1e-3
