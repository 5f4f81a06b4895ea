"""Every registered method runs through the engine end to end (files in, files out), and a
method's own arity errors surface before any output exists."""

from __future__ import annotations

import pytest
import torch

from npdecode.errors import NpdecodeError
from npdecode.merge.api import merge_models
from npdecode.merge.registry import REQUIRED, all_methods
from tests.merge.helpers import read_tensors

# methods that take the base plus exactly one other model, or exactly one model
PAIR_WITH_BASE = {"slerp", "nearswap", "arcee_fusion"}
SINGLE = {"passthrough"}


def _recipe(name, a, b, c):
    method = all_methods()[name]
    per = {k: 0.5 for k, v in method.tensor_params.items() if v is REQUIRED or k in ("weight", "density")}
    glob = {k: 0.5 for k, v in method.global_params.items() if v is REQUIRED}
    models = [a] if name in SINGLE else [a, b] if name in PAIR_WITH_BASE else [b, c]
    recipe = {
        "merge_method": name,
        "models": [{"model": str(m), "parameters": per} for m in models],
        "parameters": glob,
    }
    if method.requires_base or name in PAIR_WITH_BASE:
        recipe["base_model"] = str(a)
    return recipe


@pytest.mark.parametrize("name", sorted(all_methods()))
def test_every_method_runs_through_the_engine(name, checkpoints, tmp_path):
    a, b, c = (checkpoints("llama", s) for s in (0, 1, 2))
    out = tmp_path / "out"
    merge_models(_recipe(name, a, b, c), out, random_seed=0)
    merged, base = read_tensors(out), read_tensors(a)
    assert merged.keys() == base.keys()
    for key, tensor in merged.items():
        assert tensor.shape == base[key].shape and tensor.dtype == base[key].dtype
        assert torch.isfinite(tensor).all(), key


def test_method_arity_error_comes_before_output(checkpoints, tmp_path):
    a, b, c = (checkpoints("llama", s) for s in (0, 1, 2))
    recipe = {"merge_method": "slerp", "base_model": str(a), "parameters": {"t": 0.5},
              "models": [{"model": str(b)}, {"model": str(c)}]}  # fmt: skip
    with pytest.raises(NpdecodeError, match="slerp"):
        merge_models(recipe, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["ties", "dare_ties", "task_arithmetic", "della"])
def test_base_listed_among_models_without_parameters(name, checkpoints, tmp_path):
    """MergeKit's usual TIES/DARE recipe lists the base with no parameters: its slot is
    dropped by the method, so the result equals the recipe without it."""
    a, b, c = (checkpoints("llama", s) for s in (0, 1, 2))
    per = {"weight": 0.5, "density": 0.7}
    listed = {"merge_method": name, "base_model": str(a), "models": [{"model": str(a)},
              {"model": str(b), "parameters": per}, {"model": str(c), "parameters": per}]}  # fmt: skip
    unlisted = {**listed, "models": listed["models"][1:]}
    merge_models(listed, tmp_path / "listed", random_seed=0)
    merge_models(unlisted, tmp_path / "unlisted", random_seed=0)
    got, want = read_tensors(tmp_path / "listed"), read_tensors(tmp_path / "unlisted")
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=0, msg=key)
