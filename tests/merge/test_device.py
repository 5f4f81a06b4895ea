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
    from npdecode.merge.api import resolve_device

    assert resolve_device("auto").type in ("cpu", "cuda")
    assert resolve_device("cpu") == torch.device("cpu")
