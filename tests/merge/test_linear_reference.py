"""End-to-end through files: linear merge vs a float64 reference; filters and gradients."""

from __future__ import annotations

import json

import numpy as np
import torch

from npdecode.merge.api import merge_models, plan_merge
from tests.merge.helpers import read_tensors


def test_linear_equals_float64_reference_across_shards(checkpoints, tmp_path):
    a, b, c = checkpoints("llama", 0), checkpoints("llama", 1), checkpoints("llama", 2)
    weights = [0.2, 0.5, 1.3]
    recipe = {
        "merge_method": "linear",
        "models": [{"model": str(m), "parameters": {"weight": w}} for m, w in zip((a, b, c), weights)],
        "dtype": "float64",
        "out_dtype": "float32",
    }
    out = tmp_path / "out"
    report = merge_models(recipe, out, out_shard_size=4096)
    assert report.shards > 1
    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = set(index["weight_map"].values())
    assert files == {f"model-{i:05d}-of-{report.shards:05d}.safetensors" for i in range(1, report.shards + 1)}
    merged = read_tensors(out)
    inputs = [read_tensors(m) for m in (a, b, c)]
    assert set(merged) == set(inputs[0])
    for name, tensor in merged.items():
        ref = sum(w * x[name].double() for w, x in zip(weights, inputs)) / sum(weights)
        assert tensor.dtype == torch.float32
        # float64 compute, one rounding to float32: within 2 float32 ulps of the reference
        torch.testing.assert_close(tensor.double(), ref, rtol=2.4e-7, atol=1e-12)


def _task(plan, name):
    return next(t for t in plan.tasks if t.out_name == name)


def test_filters_and_gradients_match_hand_values(checkpoints):
    """Gradients interpolate over layer depth; the first matching filter wins; precedence
    is model > global; non-layer tensors sit at t = 0 (as in MergeKit)."""
    a, b = checkpoints("llama", 0, "safetensors"), checkpoints("llama", 1)
    recipe = {
        "merge_method": "linear",
        "models": [
            {"model": str(a), "parameters": {"weight": [{"filter": "mlp", "value": [1.0, 3.0]}, {"value": 0.5}]}},
            {"model": str(b)},
        ],
        "parameters": {
            "weight": [{"filter": "self_attn", "value": [0.0, 0.2, 1.0]}, {"value": 7.0}],
            "normalize": False,
        },
    }
    plan = plan_merge(recipe)
    # 2 layers -> t = 0 for layer 0, 1 for layer 1
    assert _task(plan, "model.layers.0.mlp.up_proj.weight").model_params["weight"] == [1.0, 7.0]
    assert _task(plan, "model.layers.1.mlp.up_proj.weight").model_params["weight"] == [3.0, 7.0]
    assert _task(plan, "model.layers.1.self_attn.q_proj.weight").model_params["weight"] == [0.5, 1.0]
    assert _task(plan, "model.layers.0.self_attn.q_proj.weight").model_params["weight"] == [0.5, 0.0]
    assert _task(plan, "model.embed_tokens.weight").model_params["weight"] == [0.5, 7.0]
    assert _task(plan, "lm_head.weight").params == {"normalize": False}


def test_gradient_over_many_layers_is_piecewise_linear(checkpoints, tmp_path):
    from tests.tiny_models import save_checkpoint

    deep = save_checkpoint("llama", tmp_path / "deep", seed=3, layers=5)
    gradient = [0.0, 1.0, 0.0]
    recipe = {
        "merge_method": "linear",
        "models": [{"model": str(deep), "parameters": {"weight": gradient}}],
        "parameters": {"normalize": False},
    }  # a zero weight cannot be normalised
    plan = plan_merge(recipe)
    for layer in range(5):
        t = layer / 4
        expected = float(np.interp(t, [0, 0.5, 1], gradient))
        got = _task(plan, f"model.layers.{layer}.mlp.down_proj.weight").model_params["weight"]
        assert got == [expected]


def test_in_memory_state_dicts_merge():
    from npdecode.merge.api import merge_state_dicts

    g = torch.Generator().manual_seed(0)
    sd = {k: {"w": torch.randn(3, 4, generator=g), "b": torch.randn(4, generator=g)} for k in ("x", "y")}
    recipe = {
        "merge_method": "linear",
        "models": [{"model": "x", "parameters": {"weight": 1.0}}, {"model": "y", "parameters": {"weight": 3.0}}],
    }
    out = merge_state_dicts(recipe, sd)
    for name in ("w", "b"):
        torch.testing.assert_close(out[name], (sd["x"][name] + 3 * sd["y"][name]) / 4)
