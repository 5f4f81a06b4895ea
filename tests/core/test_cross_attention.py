"""Query-grouped cross-attention: the same logits as the plain per-row decoder under any reordering."""

from __future__ import annotations

import copy

import pytest
import torch

from npdecode import cross_attention
from npdecode.backbone import load_backbone
from npdecode.model import VanillaModel
from tests.core.helpers import make_np_model

FAMILIES = ["t5", "t5_gated", "bart", "bert2bert"]
QUERIES = ["alpha beta", "gamma delta river castle stone", "river", "beta beta gamma alpha"]
# rows (indexing the current rows) after each step: beams of uneven size, rows out of query
# order, duplicated rows, a query dropping out (and then most of them: the cache is compacted)
REORDERS = [
    [0, 0, 0, 1, 1, 2, 3, 3],
    [7, 6, 0, 1, 2, 3, 4, 5, 5, 2],
    [0, 3, 4, 7, 9, 8, 8],  # query 1 drops out
    [0, 3, 5, 6],  # only queries 3 and 2 left: compaction
    [3, 2, 1, 0, 0],
]


@pytest.fixture(scope="module")
def backbones(t5_dir, t5_gated_dir, bart_dir, bert2bert_dir):
    return {
        k: load_backbone(d)
        for k, d in {"t5": t5_dir, "t5_gated": t5_gated_dir, "bart": bart_dir, "bert2bert": bert2bert_dir}.items()
    }


def _run(model, ids, mask, inputs):
    """Logits of every step, feeding ``inputs[t]`` (a function of the row count) and reordering."""
    out = []
    state = model.init_state(*model.encode(ids, mask))
    prev = torch.full((ids.shape[0],), model.start_id)
    for t, rows in enumerate(REORDERS + [None]):
        logits, state = model.step(prev, state)
        out.append(logits)
        if rows is None:
            break
        rows = torch.tensor(rows)
        state = model.reorder_state(state, rows)
        prev = inputs[t][: len(rows)]
    return out, state


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kind", ["np", "vanilla"])
def test_grouped_equals_plain_under_any_reordering(backbones, family, kind):
    bb = backbones[family]
    model = make_np_model(bb) if kind == "np" else VanillaModel(bb)
    ids, mask = model.tokenize(QUERIES)
    assert not bool(mask.all()), "the queries must need padding"
    g = torch.Generator().manual_seed(1)
    inputs = [torch.randint(2, 20, (16,), generator=g) for _ in REORDERS]
    plain = copy.copy(model)
    plain.grouped_cross_attention = False
    with torch.no_grad():
        grouped_out, state = _run(model, ids, mask, inputs)
        plain_out, _ = _run(plain, ids, mask, inputs)
    assert model.grouped_cross_attention is True, "grouped cross-attention did not engage"
    assert state.rows_query is not None and state.enc.shape[0] == 2  # compacted to the two queries left
    for step, (a, b) in enumerate(zip(grouped_out, plain_out)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=f"step {step}")


def test_groups_cover_uneven_and_unsorted_rows():
    rows_query = torch.tensor([2, 0, 2, 2, 0, 3])
    g = cross_attention.groups_for(rows_query, 4, frozenset())
    assert g.n_groups == 3 and g.width == 3 and g.select.tolist() == [0, 2, 3]
    sorted_q = rows_query[g.order]
    assert sorted_q.tolist() == [0, 0, 2, 2, 2, 3]
    assert g.group.tolist() == [0, 0, 1, 1, 1, 2] and g.slot.tolist() == [0, 1, 0, 1, 2, 0]
    uniform = cross_attention.groups_for(torch.tensor([0, 0, 1, 1]), 2, frozenset())
    assert uniform.group is None and uniform.order is None and uniform.select is None and uniform.width == 2


def test_eager_decoders_decode_ungrouped(bert2bert_dir):
    bb = load_backbone(bert2bert_dir)
    bb.decoder.config._attn_implementation = "eager"
    model = make_np_model(bb)
    assert not cross_attention.supported(bb.decoder)
    ids, mask = model.tokenize(QUERIES[:2])
    state = model.init_state(*model.encode(ids, mask))
    assert state.rows_query is None
    with torch.no_grad():
        _, state = model.step(torch.full((2,), model.start_id), state)
    assert state.rows_query is None and bb.decoder.config._attn_implementation == "eager"


def test_config_restored_after_each_step(backbones):
    bb = backbones["bart"]
    model = make_np_model(bb)
    ids, mask = model.tokenize(QUERIES[:2])
    with torch.no_grad():
        model.step(torch.full((2,), model.start_id), model.init_state(*model.encode(ids, mask)))
    assert bb.decoder.config._attn_implementation == "sdpa"
    assert bb.model.config._attn_implementation == "sdpa"


def test_threads_decoding_one_model_at_once_match_one_at_a_time(backbones):
    """Two threads stepping the same model concurrently: each gets the plain decoder's logits,
    and the config names `sdpa` again once both are done."""
    import threading

    bb = backbones["bert2bert"]
    model = make_np_model(bb)
    ids, mask = model.tokenize(QUERIES)
    g = torch.Generator().manual_seed(1)
    inputs = [torch.randint(2, 20, (16,), generator=g) for _ in REORDERS]
    with torch.no_grad():
        want, _ = _run(model, ids, mask, inputs)
    results, errors = {}, []

    def worker(i):
        try:
            with torch.no_grad():
                for _ in range(5):
                    results[i] = _run(model, ids, mask, inputs)[0]
        except Exception as err:  # noqa: BLE001 (reported below)
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for got in results.values():
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert bb.decoder.config._attn_implementation == "sdpa"
