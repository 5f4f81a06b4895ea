"""Every architecture family merges; the result has the base's layout and loads in transformers."""

from __future__ import annotations

import pytest
import torch

from npdecode.merge.api import merge_models
from tests.merge.helpers import header_specs, linear_recipe, load_hf, logits_of, read_tensors
from tests.tiny_models import MERGE_FAMILIES as FAMILIES


@pytest.mark.parametrize("family", FAMILIES)
def test_family_merges_and_loads(family, checkpoints, tmp_path):
    a, b = checkpoints(family, 0), checkpoints(family, 1)
    out = tmp_path / "out"
    merge_models(linear_recipe([a, b], [0.25, 0.75], base_model=str(a)), out)

    base = read_tensors(a)
    specs = header_specs(out)
    assert set(specs) == set(base), "output tensor names must be the base's"
    for name, (shape, dtype) in specs.items():
        assert shape == tuple(base[name].shape) and dtype == base[name].dtype, name
    model = load_hf(family, out)
    logits = logits_of(family, model)
    assert torch.isfinite(logits).all()
    # the loaded model really carries the merged weights (nothing re-initialised)
    loaded = model.state_dict()
    merged = read_tensors(out)
    for name, tensor in merged.items():
        if name in loaded:
            torch.testing.assert_close(loaded[name], tensor, rtol=0, atol=0)


@pytest.mark.parametrize("family", ["t5", "t5v11", "bart", "gpt2"])
@pytest.mark.parametrize("fmt", ["bin", "sharded"])
def test_bin_and_sharded_inputs_match_safetensors(family, fmt, checkpoints, tmp_path):
    """The same weights saved as .bin (tied storages) or shards merge to identical outputs."""
    ref_out, alt_out = tmp_path / "ref", tmp_path / "alt"
    merge_models(linear_recipe([checkpoints(family, 0), checkpoints(family, 1)], [0.5, 0.5]), ref_out)
    merge_models(linear_recipe([checkpoints(family, 0, fmt), checkpoints(family, 1, fmt)], [0.5, 0.5]), alt_out)
    ref, alt = read_tensors(ref_out), read_tensors(alt_out)
    assert set(ref) == set(alt)
    for name in ref:
        torch.testing.assert_close(ref[name], alt[name], rtol=0, atol=0)


def test_original_t5_keeps_relu_ffn_and_tied_head(checkpoints, tmp_path):
    out = tmp_path / "out"
    merge_models(linear_recipe([checkpoints("t5", 0), checkpoints("t5", 1)], [1, 1]), out)
    names = set(read_tensors(out))
    assert "encoder.block.0.layer.1.DenseReluDense.wi.weight" in names
    assert "lm_head.weight" not in names  # tied: saved once, as transformers does
    assert "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight" in names
