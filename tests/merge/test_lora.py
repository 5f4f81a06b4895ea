"""``model+lora`` references: the adapter is folded in first (PEFT's file format, no PEFT needed)."""

from __future__ import annotations

import json

import torch
from safetensors.torch import save_file

from npdecode.merge.api import merge_models
from tests.merge.helpers import read_tensors


def _adapter(path, rank=2, alpha=6.0, rslora=False):
    g = torch.Generator().manual_seed(7)
    tensors = {
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.randn(rank, 16, generator=g),
        "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.randn(16, rank, generator=g),
        "base_model.model.model.embed_tokens.lora_embedding_A": torch.randn(rank, 40, generator=g),
        "base_model.model.model.embed_tokens.lora_embedding_B": torch.randn(16, rank, generator=g),
        "base_model.model.lm_head.weight": torch.randn(40, 16, generator=g),  # modules_to_save
    }
    path.mkdir()
    save_file(tensors, path / "adapter_model.safetensors")
    cfg = {"r": rank, "lora_alpha": alpha, "use_rslora": rslora, "peft_type": "LORA",
           "target_modules": ["q_proj", "embed_tokens"], "modules_to_save": ["lm_head"]}  # fmt: skip
    (path / "adapter_config.json").write_text(json.dumps(cfg))
    return tensors


def test_lora_adapter_is_merged_into_its_model(checkpoints, tmp_path):
    base = checkpoints("llama", 0)
    lora = _adapter(tmp_path / "adapter")
    out = tmp_path / "out"
    merge_models({"merge_method": "passthrough", "models": [{"model": f"{base}+{tmp_path / 'adapter'}"}]}, out)
    merged, orig = read_tensors(out), read_tensors(base)
    scale = 6.0 / 2
    p = "base_model.model."
    q = "model.layers.0.self_attn.q_proj.weight"
    expected_q = (
        orig[q].double()
        + scale
        * lora[p + q.replace(".weight", ".lora_B.weight")].double()
        @ lora[p + q.replace(".weight", ".lora_A.weight")].double()
    )
    torch.testing.assert_close(merged[q].double(), expected_q.float().double())
    emb = "model.embed_tokens.weight"
    delta = (
        lora[p + "model.embed_tokens.lora_embedding_B"].double()
        @ lora[p + "model.embed_tokens.lora_embedding_A"].double()
    ).T
    torch.testing.assert_close(merged[emb].double(), (orig[emb].double() + scale * delta).float().double())
    assert torch.equal(merged["lm_head.weight"], lora[p + "lm_head.weight"])
    untouched = "model.layers.1.self_attn.q_proj.weight"
    assert torch.equal(merged[untouched], orig[untouched])
