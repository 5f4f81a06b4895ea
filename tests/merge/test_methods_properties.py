"""Properties every merge method must keep: self-merges, zero task vectors, shapes, dtypes, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from npdecode.errors import NpdecodeError
from npdecode.merge.registry import all_methods, get_method

# name -> (number of non-base models, base given, extra model params, extra global params)
SETUPS: dict[str, tuple[int, bool, dict, dict]] = {
    "linear": (3, False, {"weight": 1.0}, {}),
    "slerp": (1, True, {}, {"t": 0.4}),
    "nuslerp": (2, False, {"weight": 1.0}, {}),
    "multislerp": (3, False, {"weight": 1.0}, {}),
    "karcher": (3, False, {}, {}),
    "task_arithmetic": (2, True, {"weight": 0.5}, {}),
    "ties": (3, True, {"weight": 1.0, "density": 0.5}, {}),
    "dare_ties": (3, True, {"weight": 1.0, "density": 0.5}, {}),
    "dare_linear": (3, True, {"weight": 1.0, "density": 0.5}, {}),
    "breadcrumbs": (2, True, {"weight": 1.0, "density": 0.8}, {}),
    "breadcrumbs_ties": (2, True, {"weight": 1.0, "density": 0.8}, {}),
    "della": (2, True, {"weight": 1.0, "density": 0.5}, {}),
    "della_linear": (2, True, {"weight": 1.0, "density": 0.5}, {}),
    "sce": (3, True, {}, {"select_topk": 0.5}),
    "model_stock": (3, True, {}, {}),
    "nearswap": (1, True, {}, {"t": 0.1}),
    "arcee_fusion": (1, True, {}, {}),
    "passthrough": (1, False, {}, {}),
    "ram": (3, True, {}, {}),
    "ramplus_tl": (3, True, {}, {}),
}


def call(name, tensors, base, extra_model=None, extra_params=None, seed=0):
    method = get_method(name)
    per_model = {k: [d] * len(tensors) for k, d in method.tensor_params.items()}
    for k, v in (extra_model or {}).items():
        per_model[k] = [v] * len(tensors)
    params = {**method.global_params, **(extra_params or {})}
    return method.func(list(tensors), base, per_model, params, torch.Generator().manual_seed(seed))


def test_setups_cover_every_registered_method():
    assert set(SETUPS) == set(all_methods())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("name", sorted(SETUPS))
@pytest.mark.parametrize("shape", [(5, 7), (11,), (2, 3, 4)])
def test_output_shape_dtype_and_finite(name, dtype, shape):
    n, with_base, model_params, params = SETUPS[name]
    g = torch.Generator().manual_seed(0)
    base = torch.randn(shape, generator=g, dtype=torch.float64)
    tensors = [(base + 0.2 * torch.randn(shape, generator=g, dtype=torch.float64)).to(dtype) for _ in range(n)]
    b = base.to(dtype) if with_base else None
    before = [t.clone() for t in tensors], (b.clone() if b is not None else None)
    out = call(name, tensors, b, model_params, params)
    assert out.dtype == dtype and out.shape == base.shape
    assert torch.isfinite(out).all()
    for t, saved in zip(tensors, before[0], strict=True):  # inputs may be shared or mmap'd
        assert torch.equal(t, saved)
    if b is not None:
        assert torch.equal(b, before[1])
    if dtype == torch.float32:  # float32 stays close to float64 (same random draws for DARE/DELLA)
        ref = call(name, [t.double() for t in tensors], base.double() if with_base else None, model_params, params)
        torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)


@st.composite
def tensor_case(draw):
    shape = draw(st.sampled_from([(3,), (4, 5), (2, 3, 4), (1, 9)]))
    seed = draw(st.integers(0, 2**31 - 1))
    scale = draw(st.sampled_from([1e-3, 1.0, 50.0]))
    n = draw(st.integers(2, 4))
    rng = np.random.default_rng(seed)
    return (
        torch.from_numpy(rng.normal(size=shape) * scale),
        torch.from_numpy(rng.normal(size=shape) * scale),
        n,
    )


SELF_MERGE_NO_BASE = {
    "linear": {"weight": 0.7},
    "nuslerp": {"weight": 0.7},
    "multislerp": {"weight": 0.7},
    "karcher": {},
}


@settings(max_examples=25, deadline=None)
@given(tensor_case(), st.sampled_from(sorted(SELF_MERGE_NO_BASE)))
def test_merging_copies_of_a_model_returns_it(case, name):
    x, _, n = case
    n = 2 if name == "nuslerp" else n
    out = call(name, [x.clone() for _ in range(n)], None, SELF_MERGE_NO_BASE[name])
    torch.testing.assert_close(out, x, rtol=1e-7, atol=1e-7 * float(x.abs().max()))


# Methods with a base: copies of x (x != base) must return x.
SELF_MERGE_WITH_BASE = {
    "nuslerp": ({"weight": 0.4}, {}, 2),
    "multislerp": ({"weight": 0.4}, {}, None),
    "task_arithmetic": ({"weight": 0.4}, {"normalize": True}, None),
    "ties": ({"weight": 0.4, "density": 1.0}, {}, None),
    "dare_ties": ({"weight": 0.4, "density": 1.0}, {"normalize": True}, None),
    "dare_linear": ({"weight": 0.4, "density": 1.0}, {"normalize": True}, None),
    "breadcrumbs": ({"weight": 0.4, "density": 1.0}, {"normalize": True}, None),
    "breadcrumbs_ties": ({"weight": 0.4, "density": 1.0}, {"normalize": True}, None),
    "della": ({"weight": 0.4, "density": 1.0}, {}, None),
    "della_linear": ({"weight": 0.4, "density": 1.0}, {"normalize": True}, None),
    "sce": ({}, {"select_topk": 1.0}, None),
    "model_stock": ({}, {}, None),
    # entries with |x - base| <= epsilon are inactive by definition (they keep the base): a
    # tiny epsilon makes every nonzero difference active, so copies return x exactly
    "ram": ({}, {"epsilon": 1e-30}, None),
    "nearswap": ({}, {"t": 1e9}, 1),  # t huge: every entry swaps
}


@settings(max_examples=40, deadline=None)
@given(tensor_case(), st.sampled_from(sorted(SELF_MERGE_WITH_BASE)), st.booleans())
def test_merging_copies_with_a_base_returns_the_copy(case, name, base_listed):
    x, base, n = case
    model_params, params, count = SELF_MERGE_WITH_BASE[name]
    # model_stock clamps the task vectors' norm product at 1e-6 (as MergeKit): tiny ones shrink t
    assume(name != "model_stock" or float((x - base).pow(2).sum()) > 1e-5)
    copies = [x.clone() for _ in range(count or n)]
    if base_listed:
        copies = [base, *copies]
    out = call(name, copies, base, model_params, params)
    torch.testing.assert_close(out, x, rtol=1e-7, atol=1e-7 * float(x.abs().max() + base.abs().max()))


BASE_METHODS = sorted(name for name, (_, with_base, _, _) in SETUPS.items() if with_base)


@settings(max_examples=40, deadline=None)
@given(tensor_case(), st.sampled_from(BASE_METHODS))
def test_zero_task_vectors_return_the_base(case, name):
    _, base, n = case
    count, _, model_params, params = SETUPS[name]
    out = call(name, [base.clone() for _ in range(count if count == 1 else n)], base, model_params, params)
    torch.testing.assert_close(out, base, rtol=1e-12, atol=1e-12 * float(base.abs().max()))


def test_base_listed_among_models_is_not_a_task_vector():
    """The base's slot (same object) carries no weight: normalization counts fine-tuned models only."""
    g = torch.Generator().manual_seed(0)
    base, x = torch.randn(4, 4, generator=g), torch.randn(4, 4, generator=g)
    per_model = {"weight": [None, 0.5], "density": [None, 1.0]}
    params = {**get_method("task_arithmetic").global_params, "normalize": True}
    out = get_method("task_arithmetic").func([base, x], base, per_model, params, None)
    torch.testing.assert_close(out, x)  # normalized by 0.5 alone


# --- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", BASE_METHODS)
def test_missing_base_is_a_clear_error(name):
    count, _, model_params, params = SETUPS[name]
    tensors = [torch.randn(3, 3) for _ in range(count)]
    with pytest.raises(NpdecodeError, match="base_model") as err:
        call(name, tensors, None, model_params, params)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", sorted(SETUPS))
def test_shape_mismatch_is_a_clear_error(name):
    count, with_base, model_params, params = SETUPS[name]
    base = torch.randn(3, 4) if with_base else None
    tensors = [torch.randn(3, 4) for _ in range(count)]
    if count == 1 and not with_base:  # passthrough: the one tensor cannot mismatch; two inputs are refused
        tensors.append(torch.randn(3, 5))
        match = "exactly one"
    else:
        tensors[-1] = torch.randn(3, 5)
        match = "different shapes"
    with pytest.raises(NpdecodeError, match=match) as err:
        call(name, tensors, base, model_params, params)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "name,count", [("slerp", 2), ("nearswap", 2), ("arcee_fusion", 2), ("nuslerp", 3), ("model_stock", 1)]
)
def test_wrong_number_of_models_is_an_error(name, count):
    _, _, model_params, params = SETUPS[name]
    base = torch.randn(3, 3)
    with pytest.raises(NpdecodeError, match=name):
        call(name, [torch.randn(3, 3) for _ in range(count)], base, model_params, params)


def test_zero_weight_sum_is_an_error_when_normalizing():
    x = torch.randn(3)
    with pytest.raises(NpdecodeError, match="sum to"):
        get_method("linear").func([x, x], None, {"weight": [1.0, -1.0]}, {"normalize": True}, None)
    with pytest.raises(NpdecodeError, match="sum to zero"):
        get_method("nuslerp").func([x, x], None, {"weight": [1.0, -1.0]}, {}, None)


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(SETUPS))
def test_cuda_matches_cpu(name):
    """Methods follow their inputs' device; deterministic ones agree with the CPU result."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    n, with_base, model_params, params = SETUPS[name]
    g = torch.Generator().manual_seed(0)
    base = torch.randn(64, 48, generator=g)
    tensors = [base + 0.2 * torch.randn(64, 48, generator=g) for _ in range(n)]
    cpu = call(name, tensors, base if with_base else None, model_params, params)
    method = get_method(name)
    per_model = {k: [d] * n for k, d in method.tensor_params.items()} | {k: [v] * n for k, v in model_params.items()}
    cuda_gen = torch.Generator(device="cuda").manual_seed(0)
    gpu = method.func(
        [t.cuda() for t in tensors], base.cuda() if with_base else None, per_model,
        {**method.global_params, **params}, cuda_gen,
    )  # fmt: skip
    assert gpu.device.type == "cuda" and gpu.dtype == cpu.dtype and torch.isfinite(gpu).all()
    if not method.uses_random:
        torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-5, rtol=1e-5)
