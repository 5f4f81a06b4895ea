"""Backbone adapter: every family loads, identifier positions and special tokens are right."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

from npdecode.backbone import load_backbone
from npdecode.errors import NpdecodeError


def test_families_and_ids(backbone_dir):
    bb = load_backbone(backbone_dir)
    assert bb.family in {"t5", "bart", "bert2bert"}
    assert bb.d_model == 32
    ids, mask = torch.tensor([[5, 6, 7, 8]]), torch.ones(1, 4, dtype=torch.long)
    assert bb.encode(ids, mask).shape == (1, 4, 32)
    expected = {
        "t5": (1, 0),
        "bart": (bb.tokenizer.eos_token_id, bb.tokenizer.eos_token_id),
        "bert2bert": (bb.tokenizer.sep_token_id, bb.tokenizer.cls_token_id),
    }[bb.family]
    assert (bb.eos_token_id, bb.decoder_start_token_id) == expected
    start_row = bb.tokenizer.bos_token_id if bb.family == "bart" else bb.decoder_start_token_id  # never EOS
    assert bb.start_row_token_id == start_row != bb.eos_token_id
    assert bb.special_ce_inputs() == {"eos": [bb.eos_token_id], "bos": [start_row]}


def test_identifier_positions(backbone_dir):
    bb = load_backbone(backbone_dir)
    ident, text = "River Castle", "alpha beta gamma delta"
    input_ids, positions = bb.tokenize_with_identifier(ident, text, max_length=64)
    target = bb.tokenize_identifier(ident)
    assert [input_ids[p] for p in positions] == target
    assert not set(target) & set(bb.tokenizer.all_special_ids)
    # the encoder input is what the tokenizer makes of "identifier text" (no merge across the seam)
    assert input_ids == bb.tokenizer(ident + " " + text)["input_ids"]
    front = {"t5": 0, "bart": 1, "bert2bert": 1}[bb.family]  # <s> / [CLS] in front
    assert positions[0] == front
    short, pos = bb.tokenize_with_identifier(ident, text * 20, max_length=12)
    assert len(short) == 12 and [short[p] for p in pos] == target
    with pytest.raises(NpdecodeError, match="max_length"):
        bb.tokenize_with_identifier(ident * 10, text, max_length=8)


def test_output_scale(t5_dir, t5_gated_dir, bart_dir):
    assert load_backbone(t5_dir).output_scale == pytest.approx(32**-0.5)
    gated = load_backbone(t5_gated_dir)
    assert gated.output_scale == 1.0
    assert "wi_0" in str(list(gated.model.state_dict()))
    assert not torch.equal(gated.output_weight(), gated.input_embeddings().weight)  # separate lm_head kept
    assert load_backbone(bart_dir).output_scale == 1.0


def test_missing_model_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(NpdecodeError, match="neither a local checkpoint"):
        load_backbone("no-such-org/no-such-model-xyz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NpdecodeError, match="config.json"):
        load_backbone(tmp_path / "empty")


def test_unsupported_family(tmp_path, t5_dir):
    cfg = json.loads((t5_dir / "config.json").read_text())
    (tmp_path / "gpt").mkdir()
    (tmp_path / "gpt" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(NpdecodeError, match="not supported"):
        load_backbone(tmp_path / "gpt")
    assert cfg["model_type"] == "t5"


class _Boom:
    """Unpickling this calls ``open(marker, "w")``: the file appears only if pickle code runs."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_bin_loads_weights_only(tmp_path, t5_dir):
    import shutil

    from safetensors.torch import load_file

    good = tmp_path / "bin"
    shutil.copytree(t5_dir, good)
    state = load_file(str(good / "model.safetensors"))
    (good / "model.safetensors").unlink()
    torch.save(state, good / "pytorch_model.bin")
    bb = load_backbone(good)
    assert torch.equal(bb.model.shared.weight, state["shared.weight"])
    bad = tmp_path / "evil"
    shutil.copytree(good, bad)
    marker = tmp_path / "pwned"
    (bad / "pytorch_model.bin").write_bytes(pickle.dumps({"shared.weight": _Boom(marker)}))
    with pytest.raises(Exception):  # noqa: B017 - any refusal will do, as long as nothing ran
        load_backbone(bad)
    assert not marker.exists()


def test_bert2bert_cross_attention_starts_as_the_last_self_attention(bert2bert_dir, tmp_path):
    import torch

    from npdecode.backbone import make_bert2bert

    encoder_dir = bert2bert_dir.parent / f"{bert2bert_dir.name}-encoder"
    out = make_bert2bert(encoder_dir, tmp_path / "b2b", cross_init="self")
    model = load_backbone(out).model
    last = model.encoder.encoder.layer[-1].attention.state_dict()
    for layer in model.decoder.bert.encoder.layer:
        cross = layer.crossattention.state_dict()
        assert cross.keys() == last.keys() and all(torch.equal(cross[k], last[k]) for k in last)
    plain = load_backbone(bert2bert_dir).model  # the default leaves them new
    assert not torch.equal(
        plain.decoder.bert.encoder.layer[0].crossattention.self.query.weight,
        plain.encoder.encoder.layer[-1].attention.self.query.weight,
    )
    with pytest.raises(NpdecodeError, match="cross_init"):
        make_bert2bert(encoder_dir, tmp_path / "bad", cross_init="mirror")


@pytest.mark.parametrize("family", ["t5", "bart", "bert2bert"])
def test_keep_decoder_layers_survives_a_save(request, family, tmp_path):
    backbone = load_backbone(request.getfixturevalue(f"{family}_dir"))
    backbone.keep_decoder_layers(1)
    backbone.model.save_pretrained(tmp_path / "m")
    backbone.tokenizer.save_pretrained(tmp_path / "m")
    again = load_backbone(tmp_path / "m")
    decoder = (
        again.model.decoder.bert.encoder.layer
        if family == "bert2bert"
        else (again.decoder.block if family == "t5" else again.decoder.layers)
    )
    assert len(decoder) == 1
    with pytest.raises(NpdecodeError, match="decoder_layers=3"):
        again.keep_decoder_layers(3)


def test_family_registry_holds_every_quirk_and_refuses_taken_types():
    from npdecode import backbone

    assert {"t5", "mt5", "bart", "encoder-decoder"} <= set(backbone._FAMILIES)
    with pytest.raises(ValueError, match="already has a backbone family"):
        backbone.register_family("bart", backbone._FAMILIES["bart"])
    for family in backbone._FAMILIES.values():  # a backbone travels to ddp_spawn workers
        assert pickle.loads(pickle.dumps(family)) == family
    source = Path(backbone.__file__).read_text()
    assert "family ==" not in source  # quirks are fields of a Family, not branches


def test_encode_split_at_any_layer_equals_encode(backbone_dir):
    """encode_from(encode_until(x, k), k) is encode(x) at every layer k and every real position,
    also when the bottom states of each example come from another batch (other padding), and a
    gradient reaches the layers from k up and nothing below."""
    bb = load_backbone(backbone_dir)
    texts = ["alpha beta gamma delta", "x y", "one two three four five six seven eight"]
    enc = bb.tokenizer(texts, return_tensors="pt", padding=True)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    full = bb.encode(ids, mask)
    layers = bb.encoder_layers()
    assert len(layers) >= 2
    for k in range(len(layers)):
        states = bb.encode_until(ids, mask, k)
        assert states.shape == full.shape
        split = bb.encode_from(states, ids, mask, k)
        torch.testing.assert_close(split * mask[..., None], full * mask[..., None], atol=1e-5, rtol=1e-5)
    assert bb.encoder_layers() == layers  # the swap is undone
    # the bottom states of one example alone, padded into the batch with zeros
    k = len(layers) - 1
    with torch.no_grad():
        alone = [
            bb.encode_until(ids[i : i + 1, : int(n)], mask[i : i + 1, : int(n)], k) for i, n in enumerate(mask.sum(1))
        ]
    padded = torch.zeros_like(full)
    for i, part in enumerate(alone):
        padded[i, : part.shape[1]] = part[0]
    split = bb.encode_from(padded, ids, mask, k)
    torch.testing.assert_close(split * mask[..., None], full * mask[..., None], atol=1e-5, rtol=1e-5)
    # gradient: the top layer gets one, the layers below get none (they do not run; T5's bottom
    # block holds the relative position bias every block uses: that one is shared)
    bb.model.zero_grad()
    bb.encode_from(padded, ids, mask, k).sum().backward()
    top = [p.grad is not None and p.grad.abs().sum() > 0 for p in layers[k].parameters()]
    below = [p.grad for layer in layers[:k] for n, p in layer.named_parameters() if "relative_attention" not in n]
    assert any(top) and all(g is None for g in below)
