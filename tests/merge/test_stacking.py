"""Layer stacking with ``slices`` (decoder-only) and per-stack recipes with ``modules`` (T5)."""

from __future__ import annotations

import json

import torch

from npdecode.merge.api import merge_models
from tests.merge.helpers import load_hf, logits_of, read_tensors


def test_slices_stack_layers_and_update_config(checkpoints, tmp_path):
    a, b = checkpoints("llama", 0), checkpoints("llama", 1)
    recipe = {
        "merge_method": "passthrough",
        "slices": [
            {"sources": [{"model": str(a), "layer_range": [0, 2]}]},
            {"sources": [{"model": str(b), "layer_range": [1, 2]}]},
        ],
    }
    out = tmp_path / "out"
    merge_models(recipe, out)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 3
    merged, ta, tb = read_tensors(out), read_tensors(a), read_tensors(b)
    for rest in ("self_attn.q_proj.weight", "mlp.down_proj.weight", "input_layernorm.weight"):
        assert torch.equal(merged[f"model.layers.0.{rest}"], ta[f"model.layers.0.{rest}"])
        assert torch.equal(merged[f"model.layers.1.{rest}"], ta[f"model.layers.1.{rest}"])
        assert torch.equal(merged[f"model.layers.2.{rest}"], tb[f"model.layers.1.{rest}"])
    assert torch.equal(merged["model.embed_tokens.weight"], ta["model.embed_tokens.weight"])  # first slice
    assert torch.equal(merged["model.norm.weight"], tb["model.norm.weight"])  # last slice
    assert not any(n.startswith("model.layers.3.") for n in merged)
    model = load_hf("llama", out)
    assert len(model.model.layers) == 3
    assert torch.isfinite(logits_of("llama", model)).all()


def test_modules_merge_encoder_and_stack_decoder(checkpoints, tmp_path):
    a, b = checkpoints("t5v11", 0), checkpoints("t5v11", 1)
    recipe = {
        "modules": {
            "encoder": {"merge_method": "linear",
                        "models": [{"model": str(a), "parameters": {"weight": 1}},
                                   {"model": str(b), "parameters": {"weight": 1}}]},
            "decoder": {"merge_method": "passthrough",
                        "slices": [{"sources": [{"model": str(a), "layer_range": [0, 2]}]},
                                   {"sources": [{"model": str(b), "layer_range": [1, 2]}]}]},
            "shared": {"merge_method": "passthrough", "models": [{"model": str(b)}]},
        },
    }  # fmt: skip
    out = tmp_path / "out"
    merge_models(recipe, out)
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["num_layers"], cfg["num_decoder_layers"]) == (2, 3)
    merged, ta, tb = read_tensors(out), read_tensors(a), read_tensors(b)
    q = "layer.0.SelfAttention.q.weight"
    torch.testing.assert_close(
        merged[f"encoder.block.1.{q}"], (ta[f"encoder.block.1.{q}"] + tb[f"encoder.block.1.{q}"]) / 2
    )
    assert torch.equal(merged[f"decoder.block.2.{q}"], tb[f"decoder.block.1.{q}"])
    assert torch.equal(merged["lm_head.weight"], tb["lm_head.weight"])
    model = load_hf("t5v11", out)
    assert len(model.decoder.block) == 3
    assert torch.isfinite(logits_of("t5v11", model)).all()


def test_t5_stacking_keeps_relative_attention_bias_in_layer_zero(checkpoints, tmp_path):
    """T5 has relative_attention_bias in block 0 only: a stack that starts from layer 1 of A
    still gets it (from A's block 0), and B's block 0 moved to position 1 drops it."""
    a, b = checkpoints("t5", 0), checkpoints("t5", 1)
    recipe = {
        "modules": {
            "encoder": {"merge_method": "passthrough", "models": [{"model": str(a)}]},
            "decoder": {"merge_method": "passthrough",
                        "slices": [{"sources": [{"model": str(a), "layer_range": [1, 2]}]},
                                   {"sources": [{"model": str(b), "layer_range": [0, 2]}]}]},
            "shared": {"merge_method": "passthrough", "models": [{"model": str(a)}]},
        },
    }  # fmt: skip
    out = tmp_path / "out"
    merge_models(recipe, out)
    merged, ta, tb = read_tensors(out), read_tensors(a), read_tensors(b)
    rel = "layer.0.SelfAttention.relative_attention_bias.weight"
    assert torch.equal(merged[f"decoder.block.0.{rel}"], ta[f"decoder.block.0.{rel}"])
    assert f"decoder.block.1.{rel}" not in merged and f"decoder.block.2.{rel}" not in merged
    q = "layer.0.SelfAttention.q.weight"
    assert torch.equal(merged[f"decoder.block.0.{q}"], ta[f"decoder.block.1.{q}"])
    assert torch.equal(merged[f"decoder.block.1.{q}"], tb[f"decoder.block.0.{q}"])
    import transformers as tf

    model, info = tf.T5ForConditionalGeneration.from_pretrained(str(out), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert len(model.decoder.block) == 3
    assert torch.isfinite(logits_of("t5", model)).all()
