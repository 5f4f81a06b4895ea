"""``--device cuda``: the same merge on the GPU equals the CPU result."""

from __future__ import annotations

import pytest
import torch

from npdecode.merge.api import merge_models
from tests.merge.helpers import read_tensors


@pytest.mark.gpu
def test_cuda_merge_matches_cpu(checkpoints, tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    a, b, c = (str(checkpoints("t5v11", s)) for s in (0, 1, 2))
    recipe = {"merge_method": "ties", "base_model": a,
              "models": [{"model": m, "parameters": {"weight": 0.5, "density": 0.5}} for m in (b, c)]}  # fmt: skip
    merge_models(recipe, tmp_path / "cpu", device="cpu")
    merge_models(recipe, tmp_path / "gpu", device="cuda", threads=2)
    cpu, gpu = read_tensors(tmp_path / "cpu"), read_tensors(tmp_path / "gpu")
    assert cpu.keys() == gpu.keys()
    for name in cpu:
        torch.testing.assert_close(gpu[name], cpu[name], rtol=1e-5, atol=1e-6)


def test_auto_device_resolves_without_cuda(checkpoints, tmp_path):
    """One resolver for every command; merge defaults to auto like the others."""
    from npdecode.device import resolve_device
    from npdecode.merge.plan import MergeOptions

    assert resolve_device("auto") in ("cpu", "cuda") and resolve_device("cpu") == "cpu"
    assert MergeOptions().device == "auto"


@pytest.mark.gpu
def test_cuda_dare_is_seeded_and_keeps_density(checkpoints, tmp_path):
    """DARE on CUDA (device-sized blocks, one CUDA generator per model): the same seed gives
    the same output, another seed another one, and about ``density`` of each entry survives."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    a, b = (str(checkpoints("t5v11", s)) for s in (0, 1))
    recipe = {"merge_method": "dare_linear", "base_model": a,
              "models": [{"model": b, "parameters": {"weight": 1.0, "density": 0.3}}]}  # fmt: skip
    outs = {}
    for name, seed in (("one", 1), ("again", 1), ("other", 2)):
        merge_models(recipe, tmp_path / name, device="cuda", random_seed=seed)
        outs[name] = read_tensors(tmp_path / name)
    base, tuned = read_tensors(checkpoints("t5v11", 0)), read_tensors(checkpoints("t5v11", 1))
    kept = total = 0
    for name, t in outs["one"].items():
        assert torch.equal(t, outs["again"][name])
        changed = tuned[name] != base[name]
        kept += int((t != base[name])[changed].sum())
        total += int(changed.sum())
        torch.testing.assert_close(t[t != base[name]], (base[name] + (tuned[name] - base[name]) / 0.3)[t != base[name]])
    assert any(not torch.equal(t, outs["other"][n]) for n, t in outs["one"].items())
    assert abs(kept / total - 0.3) < 0.02
