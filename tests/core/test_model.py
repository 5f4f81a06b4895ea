"""Np and vanilla models: logits by hand, cached steps vs teacher forcing, bit-exact round trips."""

from __future__ import annotations

import json

import pytest
import torch

from npdecode.backbone import load_backbone
from npdecode.errors import NpdecodeError
from npdecode.model import NPDECODE_JSON, NpModel, VanillaModel, load_model, save_model
from tests.core.helpers import make_np_model


@pytest.fixture(scope="module")
def backbones(t5_dir, t5_gated_dir, bart_dir, bert2bert_dir):
    return {
        k: load_backbone(d)
        for k, d in {"t5": t5_dir, "t5_gated": t5_gated_dir, "bart": bart_dir, "bert2bert": bert2bert_dir}.items()
    }


FAMILIES = ["t5", "t5_gated", "bart", "bert2bert"]


@pytest.mark.parametrize("family", FAMILIES)
def test_np_logits_are_h_dot_ce(backbones, family):
    bb = backbones[family]
    model = make_np_model(bb)
    ids, mask = model.tokenize(["alpha beta gamma", "river"])
    dec = torch.tensor([[0, 5, 7], [0, 3, 1]])
    with torch.no_grad():
        logits = model(ids, mask, dec)
        enc = bb.encode(ids, mask)
        # by hand: decoder fed with CE rows, hidden states times CEᵀ, backbone output scale
        h = bb.decoder(inputs_embeds=model.ce[dec], encoder_hidden_states=enc, encoder_attention_mask=mask)[0]
        by_hand = (h.double() @ model.ce.double().T) * bb.output_scale
    assert logits.shape == (2, 3, model.vocab_size)
    torch.testing.assert_close(logits.double(), by_hand, rtol=1e-5, atol=1e-5)
    expected_scale = 32**-0.5 if family == "t5" else 1.0
    assert model.output_scale == pytest.approx(expected_scale)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kind", ["np", "vanilla"])
def test_cached_steps_equal_teacher_forcing(backbones, family, kind):
    bb = backbones[family]
    model = make_np_model(bb) if kind == "np" else VanillaModel(bb)
    ids, mask = model.tokenize(["alpha beta", "gamma delta river castle"])
    dec = torch.tensor([[model.start_id, 5, 7, 9], [model.start_id, 3, 3, 2]])
    with torch.no_grad():
        full = model(ids, mask, dec)
        state = model.init_state(*model.encode(ids, mask))
        steps = []
        for t in range(dec.shape[1]):
            logits, state = model.step(dec[:, t], state)
            steps.append(logits)
            if t == 1:  # reordering rows mid-way must carry the KV cache along
                state = model.reorder_state(state, torch.tensor([1, 0]))
                dec = dec[[1, 0]]
                full = full[[1, 0]]
    torch.testing.assert_close(torch.stack(steps[2:], 1), full[:, 2:], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_vanilla_matches_hf_logits(backbones, family):
    bb = backbones[family]
    model = VanillaModel(bb)
    ids, mask = model.tokenize(["alpha beta gamma"])
    dec = torch.tensor([[model.start_id, 5, 7]])
    with torch.no_grad():
        ours = model(ids, mask, dec)
        hf = bb.model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
    torch.testing.assert_close(ours, hf, rtol=1e-5, atol=1e-5)


def test_frozen_by_default_trainable_on_request(backbones):
    bb = backbones["t5"]
    frozen = make_np_model(bb)
    assert not frozen.ce.requires_grad and not frozen.log_scale.requires_grad
    ce, tid = frozen.ce.detach().clone(), frozen.ce_token_ids.clone()
    live = NpModel(bb, ce, tid, trainable_ce=True, learn_scale=True, logit_scale=0.1)
    ids, mask = live.tokenize(["alpha"])
    loss = torch.nn.functional.cross_entropy(live(ids, mask, torch.tensor([[0, 4]]))[0], torch.tensor([4, 1]))
    loss.backward()
    assert live.ce.grad is not None and live.ce.grad.abs().sum() > 0
    assert live.log_scale.grad is not None
    assert live.log_scale.exp().item() == pytest.approx(0.1)


@pytest.mark.parametrize("family", FAMILIES)
def test_checkpoint_round_trip_bit_exact(backbones, family, tmp_path):
    bb = backbones[family]
    model = NpModel(
        bb,
        make_np_model(bb, seed=3).ce.detach(),
        make_np_model(bb, seed=3).ce_token_ids,
        start_ce_id=0,
        eos_ce_id=1,
        logit_scale=0.37,
        learn_scale=True,
    )
    save_model(model, tmp_path / "ckpt")
    meta = json.loads((tmp_path / "ckpt" / NPDECODE_JSON).read_text())
    assert meta["kind"] == "np" and meta["learn_scale"] is True
    back = load_model(tmp_path / "ckpt")
    assert isinstance(back, NpModel)
    a, b = model.state_dict(), back.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
    ids, mask = model.tokenize(["alpha beta"])
    dec = torch.tensor([[0, 4, 5]])
    with torch.no_grad():
        assert torch.equal(model(ids, mask, dec), back(ids, mask, dec))
    save_model(VanillaModel(bb), tmp_path / "vanilla")
    assert isinstance(load_model(tmp_path / "vanilla"), VanillaModel)


def test_bad_ce_inputs(backbones):
    bb = backbones["t5"]
    with pytest.raises(NpdecodeError, match="shape"):
        NpModel(bb, torch.zeros(5, 7), torch.zeros(5, dtype=torch.long))
    with pytest.raises(NpdecodeError, match="outside"):
        NpModel(bb, torch.zeros(5, 32), torch.zeros(5, dtype=torch.long), eos_ce_id=9)


def test_cache_argument_follows_the_decoder_signature():
    """Older transformers 5.x name the KV cache ``past_key_values``: the name is read from the
    signature, never guessed (a wrong keyword is swallowed by ``**kwargs`` and drops the cache)."""
    from npdecode.errors import NpdecodeError
    from npdecode.model import _cache_argument

    class New:
        def forward(self, inputs_embeds=None, cache=None, use_cache=None, **kwargs): ...

    class Old:
        def forward(self, inputs_embeds=None, past_key_values=None, use_cache=None, **kwargs): ...

    class Neither:
        def forward(self, inputs_embeds=None, **kwargs): ...

    assert _cache_argument(New) == "cache" and _cache_argument(Old) == "past_key_values"
    with pytest.raises(NpdecodeError, match="neither"):
        _cache_argument(Neither)


@pytest.mark.parametrize("family", FAMILIES)
def test_token_embeddings_join_every_row_of_their_token(backbones, family):
    """With token embeddings the decoder reads and scores ``CE[r] + E[token(r)]``, by hand in
    float64; cached steps equal teacher forcing; a sampled subset of rows scores as the full
    table; training moves E (one gradient for all rows of a token), never the frozen CE."""
    bb = backbones[family]
    ref = make_np_model(bb, seed=7)
    model = NpModel(bb, ref.ce.detach(), ref.ce_token_ids, logit_scale=0.4, token_embeddings=True)
    assert torch.count_nonzero(model.token_emb) == 0  # starts as plain Np
    torch.testing.assert_close(model.table(), model.ce)
    with torch.no_grad():
        model.token_emb.normal_()
    table = model.ce.double() + model.token_emb.double()[model.ce_token_ids]
    ids, mask = model.tokenize(["alpha beta", "gamma"])
    dec = torch.tensor([[0, 4, 5], [0, 6, 7]])
    with torch.no_grad():
        torch.testing.assert_close(model.embed(dec).double(), table[dec])
        enc, _ = model.encode(ids, mask)
        hidden, _ = model._decode(model.embed(dec), enc, mask)
        by_hand = (0.4 * bb.output_scale) * hidden.double() @ table.T
        ours = model(ids, mask, dec)
        torch.testing.assert_close(ours.double(), by_hand, rtol=1e-4, atol=1e-4)
        rows = torch.tensor([1, 3, 4])
        torch.testing.assert_close(model.logits(hidden, rows), ours[..., rows])
        state, steps = model.init_state(enc, mask), []
        for t in range(dec.shape[1]):
            logits, state = model.step(dec[:, t], state)
            steps.append(logits)
        torch.testing.assert_close(torch.stack(steps, 1), ours, rtol=1e-4, atol=1e-4)
    labels = torch.tensor([4, 5, 1, 6, 7, 1])
    torch.nn.functional.cross_entropy(model(ids, mask, dec).flatten(0, 1), labels).backward()
    assert model.ce.grad is None
    used = torch.zeros(len(model.token_emb), dtype=torch.bool)
    used[model.ce_token_ids] = True
    assert model.token_emb.grad[used].abs().sum() > 0 and model.token_emb.grad[~used].abs().sum() == 0


@pytest.mark.parametrize("family", ["t5", "bert2bert"])
def test_token_embeddings_round_trip_and_reach_appended_rows(backbones, family, tmp_path):
    from safetensors.torch import load_file, save_file

    from npdecode.model import CE_FILE

    bb = backbones[family]
    ref = make_np_model(bb, seed=8)
    model = NpModel(bb, ref.ce.detach(), ref.ce_token_ids, logit_scale=0.2, token_embeddings=True)
    with torch.no_grad():
        model.token_emb.normal_()
    save_model(model, tmp_path / "ckpt")
    assert json.loads((tmp_path / "ckpt" / NPDECODE_JSON).read_text())["token_embeddings"] is True
    back = load_model(tmp_path / "ckpt")
    a, b = model.state_dict(), back.state_dict()
    assert a.keys() == b.keys() and "token_emb" in a
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # rows appended after training (a known token and a token no row had): CE + that token's E
    extra, extra_tokens = torch.randn(2, bb.d_model), torch.tensor([int(model.ce_token_ids[4]), 11])
    wider = back.with_table(torch.cat([model.ce.detach(), extra]), torch.cat([model.ce_token_ids, extra_tokens]), 0, 1)
    assert wider.token_emb is back.token_emb and wider.log_scale.item() == back.log_scale.item()
    torch.testing.assert_close(wider.table()[-2:], extra + back.token_emb.detach()[extra_tokens])
    ids, mask = model.tokenize(["alpha beta"])
    dec = torch.tensor([[0, 4, 5]])
    with torch.no_grad():
        torch.testing.assert_close(wider(ids, mask, dec)[..., : model.vocab_size], model(ids, mask, dec))
    t = load_file(str(tmp_path / "ckpt" / CE_FILE))
    save_file({k: v for k, v in t.items() if k != "token_emb"}, str(tmp_path / "ckpt" / CE_FILE))
    with pytest.raises(NpdecodeError, match="token_emb"):
        load_model(tmp_path / "ckpt")
