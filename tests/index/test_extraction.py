"""CE extraction: rows are the encoder states at identifier positions (oracle: direct forward)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from npdecode.backbone import load_backbone
from npdecode.index.assembly import read_occurrences, special_rows
from npdecode.index.builder import encode_shards, tokenize_identifiers
from npdecode.index.extraction import length_batches
from npdecode.index.identifiers import assign_identifiers
from tests.index.helpers import fast_config
from tests.tiny_models import toy_corpus


def test_length_batches_respect_budgets_and_cover_everything():
    lengths = [5, 40, 7, 7, 30, 2, 64, 9, 11, 3]
    batches = length_batches(lengths, batch_tokens=64, batch_size=3)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) <= 3
        assert max(lengths[i] for i in batch) * len(batch) <= 64
        assert [lengths[i] for i in batch] == sorted((lengths[i] for i in batch), reverse=True)


@pytest.mark.parametrize("family", ["t5", "bart", "bert2bert"])
def test_ce_rows_are_encoder_states_at_identifier_positions(family, request, tmp_path):
    backbone = load_backbone(request.getfixturevalue(f"{family}_dir"))
    corpus = toy_corpus(11, seed=3)
    config = fast_config()
    groups = assign_identifiers(corpus)
    ident_tokens = tokenize_identifiers(backbone, groups)
    encode_shards(backbone, groups, tmp_path / "shards", config)
    occ = read_occurrences(tmp_path / "shards", ident_tokens, config.shard_size)
    start = 0
    for group, tokens in zip(groups, ident_tokens):
        ids, positions = backbone.tokenize_with_identifier(group.identifier, group.text, config.max_length)
        with torch.no_grad():  # oracle: one unpadded forward pass of this document alone
            hidden = backbone.encode(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))[0]
        want = hidden[positions].numpy()
        got = occ["vectors"][start : start + len(tokens)]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        assert occ["tokens"][start : start + len(tokens)].tolist() == tokens == [ids[p] for p in positions]
        start += len(tokens)
    assert start == len(occ["vectors"])
    # special rows: each token encoded alone
    vectors, tokens = special_rows(backbone)
    # the start row: the decoder start token, or BOS where that is EOS too (BART)
    start = backbone.decoder_start_token_id if backbone.family != "bart" else backbone.tokenizer.bos_token_id
    assert tokens.tolist() == [start, backbone.eos_token_id] and start != backbone.eos_token_id
    with torch.no_grad():
        for row, token in enumerate((start, backbone.eos_token_id)):
            alone = backbone.encode(torch.tensor([[token]]), torch.ones(1, 1, dtype=torch.long))[0, 0]
            np.testing.assert_allclose(vectors[row], alone.numpy(), rtol=1e-6, atol=1e-6)
