"""The training step: loss by hand, what trains and what stays frozen, the encoder-state cache,
the logit scale's round trip, the data pipeline's batches and seeded order."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from npdecode.errors import NpdecodeError
from npdecode.index.builder import CERebuilder, build_index
from npdecode.index.layout import load_index
from npdecode.model import NpModel, load_model, save_model
from npdecode.train.components import build_model, targets_of
from npdecode.train.data import Collate, EpochShuffle, ExampleSet
from npdecode.train.examples import tokenize_examples
from npdecode.train.module import GRModule, lr_factor
from tests.index.helpers import fast_config as fast_index_config
from tests.index.helpers import toy_corpus_file
from tests.train.helpers import fast_config, load


@pytest.fixture(scope="module")
def t5_index(t5_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("t5index")
    return load_index(build_index(toy_corpus_file(tmp, 10, seed=4), t5_dir, tmp / "idx", fast_index_config()))


def _batch(model, index, texts, groups, variant="np"):
    tokens = tokenize_examples(model.backbone.tokenizer, texts, 32)
    items = [ExampleSet(tokens, targets_of(index, variant), groups)[i] for i in range(len(texts))]
    return Collate(model.backbone.pad_token_id, model.start_id)(items)


def _module(t5_dir, index, tmp_path, **model_cfg):
    config = load(fast_config(t5_dir, tmp_path, model=model_cfg))
    model = build_model(config, str(t5_dir), index)
    return GRModule(model, config), config


def test_loss_is_cross_entropy_over_ce_ids_by_hand(t5_dir, t5_index, tmp_path):
    module, _ = _module(t5_dir, t5_index, tmp_path, logit_scale=0.3)
    model = module.model
    batch = _batch(model, t5_index, ["alpha river", "gamma star city"], [0, 3])
    loss = module.loss(batch)
    total, count = 0.0, 0
    with torch.no_grad():
        for row in range(2):
            target = [t for t in batch["labels"][row].tolist() if t != -100]
            prev = [model.start_id] + target[:-1]
            ids = batch["input_ids"][row : row + 1]
            mask = batch["attention_mask"][row : row + 1]
            enc = model.backbone.encode(ids, mask)
            hidden, _ = model._decode(model.embed(torch.tensor([prev])), enc, mask)
            logits = 0.3 * model.output_scale * hidden[0].double() @ model.ce.double().T  # (L, V_ce)
            logp = torch.log_softmax(logits, -1)
            total -= sum(float(logp[i, t]) for i, t in enumerate(target))
            count += len(target)
    assert target == t5_index.groups[3].ce + [t5_index.eos_ce]
    assert float(loss) == pytest.approx(total / count, rel=1e-5)


def test_sampled_softmax_by_hand_and_its_candidate_rows(t5_dir, t5_index, tmp_path):
    """The sampled loss is the cross-entropy over the candidate rows only (float64 by hand); the
    candidates hold every gold row and every row of a gold row's token."""
    module, _ = _module(t5_dir, t5_index, tmp_path, logit_scale=0.3, sampled_negatives=3)
    model = module.model
    module.train()
    batch = _batch(model, t5_index, ["alpha river", "gamma star city"], [0, 3])
    torch.manual_seed(5)
    rows = module.candidate_rows(batch["labels"], 3)
    gold = set(batch["labels"][batch["labels"] >= 0].tolist())
    tokens = model.ce_token_ids
    same = {r for r in range(model.vocab_size) if int(tokens[r]) in {int(tokens[g]) for g in gold}}
    assert rows.tolist() == sorted(set(rows.tolist())) and gold | same <= set(rows.tolist())
    assert len(rows) < model.vocab_size
    torch.manual_seed(5)
    loss = module.loss(batch)
    total, count = 0.0, 0
    with torch.no_grad():
        enc = model.backbone.encode(batch["input_ids"], batch["attention_mask"])
        hidden, _ = model._decode(model.embed(batch["decoder_input_ids"]), enc, batch["attention_mask"])
        logits = 0.3 * model.output_scale * hidden.double() @ model.ce[rows].double().T
        logp = torch.log_softmax(logits, -1)
        for b in range(2):
            for i, t in enumerate(batch["labels"][b].tolist()):
                if t != -100:
                    total -= float(logp[b, i, rows.tolist().index(t)])
                    count += 1
    assert float(loss) == pytest.approx(total / count, rel=1e-5)
    module.eval()  # validation loss: the whole table
    full, _ = _module(t5_dir, t5_index, tmp_path, logit_scale=0.3)
    full.model.load_state_dict(model.state_dict())
    full.eval()
    assert float(module.loss(batch)) == pytest.approx(float(full.loss(batch)), rel=1e-6)


def test_frozen_ce_stays_bit_identical_trainable_ce_changes(t5_dir, t5_index, tmp_path):
    for train_ce in (False, True):
        module, _ = _module(t5_dir, t5_index, tmp_path, train_ce=train_ce)
        before = module.model.ce.detach().clone()
        dec_before = next(module.model.backbone.decoder.parameters()).detach().clone()
        opt = module.configure_optimizers()["optimizer"]
        module.loss(_batch(module.model, t5_index, ["alpha river", "star"], [1, 2])).backward()
        opt.step()
        assert torch.equal(module.model.ce, before) is (not train_ce)
        assert not torch.equal(next(module.model.backbone.decoder.parameters()), dec_before)


def test_frozen_encoder_cache_gives_the_uncached_loss_and_encoder_does_not_move(t5_dir, t5_index, tmp_path):
    module, _ = _module(t5_dir, t5_index, tmp_path, freeze_encoder=True)
    module.train()
    assert not module.model.backbone.encoder.training
    batch = _batch(module.model, t5_index, ["alpha river", "gamma star city", "iron"], [0, 3, 5])
    enc_before = [p.detach().clone() for p in module.model.backbone.encoder.parameters()]
    first = module.loss(batch)  # fills the cache
    assert len(module.cache) == 3
    again = module.loss(batch)  # from the cache
    assert float(first) == pytest.approx(float(again), rel=1e-6)
    module.cache.states.clear()
    module.cache = None
    uncached = module.loss(batch)
    assert float(first) == pytest.approx(float(uncached), rel=1e-5)
    opt = module.configure_optimizers()["optimizer"]
    again.backward()
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(enc_before, module.model.backbone.encoder.parameters()))


@pytest.mark.parametrize("family", ["t5", "bart", "bert2bert"])
def test_train_encoder_layers_moves_only_the_top_layers(family, request, tmp_path):
    """train_encoder_layers=1: a step changes the encoder's top layer and nothing below it (nor
    the embeddings); the frozen part runs without dropout, the top layer with it."""
    backbone_dir = request.getfixturevalue(f"{family}_dir")
    corpus = toy_corpus_file(tmp_path, 6, seed=2)
    index = load_index(build_index(corpus, backbone_dir, tmp_path / "idx", fast_index_config()))
    module, config = _module(backbone_dir, index, tmp_path, train_encoder_layers=1)
    encoder = module.model.backbone.encoder
    layers = module.model.backbone.encoder_layers()
    assert len(layers) >= 2
    top = {id(p) for p in layers[-1].parameters()}
    before = {name: p.detach().clone() for name, p in encoder.named_parameters()}
    module.train()
    assert layers[-1].training and not layers[0].training and not encoder.training
    opt = module.configure_optimizers()["optimizer"]
    module.loss(_batch(module.model, index, ["alpha river", "gamma star"], [0, 1])).backward()
    opt.step()
    moved = {name for name, p in encoder.named_parameters() if not torch.equal(p, before[name])}
    assert moved and all(id(dict(encoder.named_parameters())[name]) in top for name in moved)
    assert not any(p.requires_grad for layer in layers[:-1] for p in layer.parameters())
    CERebuilder(corpus, config.index, module.model.backbone).rebuild(module.model.backbone)  # async
    assert layers[-1].training and not layers[0].training  # the rebuild gives each part its mode back
    with pytest.raises(NpdecodeError, match="train_encoder_layers=9"):
        _module(backbone_dir, index, tmp_path, train_encoder_layers=9)
    with pytest.raises(NpdecodeError, match="freeze_encoder"):
        load(fast_config(backbone_dir, tmp_path, model={"freeze_encoder": True, "train_encoder_layers": 1}))


@pytest.mark.parametrize("family", ["t5", "bart", "bert2bert"])
def test_top_layer_cache_gives_the_uncached_loss_and_gradients(family, request, tmp_path):
    """train_encoder_layers=1 with cache_encoder_states: the cache holds the states entering the
    top layer (the frozen layers run once per example), and a step gives the loss and gradients
    of the uncached step (same dropout draws: the frozen part draws none)."""
    backbone_dir = request.getfixturevalue(f"{family}_dir")
    corpus = toy_corpus_file(tmp_path, 6, seed=2)
    index = load_index(build_index(corpus, backbone_dir, tmp_path / "idx", fast_index_config()))

    def step(cache: bool):
        module, _ = _module(backbone_dir, index, tmp_path, train_encoder_layers=1, cache_encoder_states=cache)
        module.train()
        batch = _batch(module.model, index, ["alpha river", "gamma star city", "iron"], [0, 3, 5])
        losses = []
        for _ in range(2):  # the first fills the cache, the second reads it
            torch.manual_seed(0)
            losses.append(module.loss(batch))
        losses[-1].backward()
        grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
        return module, losses, grads

    cached, losses, grads = step(True)
    assert len(cached.cache) == 3 and cached.cache.states[0].shape[-1] == cached.model.backbone.d_model
    plain, plain_losses, plain_grads = step(False)
    assert plain.cache is None
    for a, b in zip(losses, plain_losses):
        assert a.item() == pytest.approx(b.item(), rel=1e-5)
    assert grads.keys() == plain_grads.keys()
    top = [p.grad for p in cached.model.backbone.encoder_layers()[-1].parameters()]
    assert all(g is not None for g in top) and any(g.abs().sum() > 0 for g in top)  # the top layer trains
    for name, grad in grads.items():
        torch.testing.assert_close(grad, plain_grads[name], atol=1e-6, rtol=1e-4, msg=name)


@pytest.mark.parametrize("learn", [False, True])
def test_logit_scale_round_trips_with_identical_logits(t5_dir, t5_index, tmp_path, learn):
    module, _ = _module(t5_dir, t5_index, tmp_path, logit_scale=0.05, learn_scale=learn)
    model = module.model
    if learn:  # a learned scale that moved
        with torch.no_grad():
            model.log_scale.add_(0.37)
    save_model(model.eval(), tmp_path / "ckpt")
    back = load_model(tmp_path / "ckpt").eval()
    assert isinstance(back, NpModel) and back.log_scale.requires_grad is learn
    ids, mask = model.tokenize(["alpha river gold"])
    dec = torch.tensor([[model.start_id, 5, 7]])
    with torch.no_grad():
        assert torch.equal(model(ids, mask, dec), back(ids, mask, dec))
    # npdecode index with the checkpoint, then the search path: the same scale and logits, for
    # the corpus of its table and for another corpus (that index's own table, the same scale)
    from npdecode.search.retrievers.generative import GenerativeRetriever

    same = build_index(t5_index.manifest.corpus[0].path, tmp_path / "ckpt", tmp_path / "same", fast_index_config())
    other = build_index(
        toy_corpus_file(tmp_path, 6, seed=9), tmp_path / "ckpt", tmp_path / "other", fast_index_config()
    )
    searched = GenerativeRetriever(same, kind="np").model
    with torch.no_grad():
        assert torch.equal(searched(ids, mask, dec), back(ids, mask, dec))
        assert torch.equal(GenerativeRetriever(other, kind="np").model.log_scale, back.log_scale)


def test_collate_teacher_forcing_layout(t5_dir, t5_index, tmp_path):
    module, _ = _module(t5_dir, t5_index, tmp_path)
    batch = _batch(module.model, t5_index, ["alpha", "gamma star city iron"], [0, 1])
    for row, group in enumerate((0, 1)):
        target = t5_index.groups[group].ce + [t5_index.eos_ce]
        n = len(target)
        assert batch["labels"][row, :n].tolist() == target and (batch["labels"][row, n:] == -100).all()
        assert batch["decoder_input_ids"][row, 0] == module.model.start_id
        assert batch["decoder_input_ids"][row, 1:n].tolist() == target[:-1]
        assert batch["attention_mask"][row].sum() == (batch["input_ids"][row] != 0).sum()


def test_epoch_shuffle_is_seeded_per_epoch_and_split_across_ranks():
    one = EpochShuffle(10, seed=3)
    first = list(one)
    one.set_epoch(1)
    second = list(one)
    assert sorted(first) == list(range(10)) and first != second
    again = EpochShuffle(10, seed=3)
    again.set_epoch(1)
    assert list(again) == second  # a resumed run sees the same order
    ranks = [EpochShuffle(10, seed=3, rank=r, world_size=3) for r in range(3)]
    for r in ranks:
        r.set_epoch(1)
    parts = [list(r) for r in ranks]
    assert all(len(p) == 4 for p in parts)  # padded by wrapping: every rank steps as often
    assert set().union(*parts) == set(range(10))


def test_length_buckets_make_batches_of_similar_length_from_a_seeded_permutation():
    rng = np.random.default_rng(0)
    lengths = rng.integers(2, 60, size=203)
    n, batch = len(lengths), 8

    def batches(world: int, rank: int, epoch: int, buckets: int = 5) -> list[list[int]]:
        s = EpochShuffle(n, seed=1, rank=rank, world_size=world, lengths=lengths, batch_size=batch, buckets=buckets)
        s.set_epoch(epoch)
        order = list(s)
        return [order[i : i + batch] for i in range(0, len(order), batch)]

    one = batches(1, 0, 0)
    flat = [i for b in one for i in b]
    assert sorted(flat) == list(range(n))  # still every example once per epoch
    assert batches(1, 0, 0) == one and batches(1, 0, 1) != one  # seeded per epoch: resumable
    spread = np.mean([np.ptp(lengths[b]) for b in one])
    plain = EpochShuffle(n, seed=1)
    plain_order = list(plain)
    plain_spread = np.mean([np.ptp(lengths[plain_order[i : i + batch]]) for i in range(0, n, batch)])
    assert spread < plain_spread / 3  # little padding: lengths in a batch are close
    assert len(one[-1]) == n % batch  # the short batch stays last; every other one is full
    firsts = [np.mean(lengths[b]) for b in one[:-1]]
    assert firsts != sorted(firsts)  # the batches themselves are shuffled, not long-to-short
    # two ranks: each global batch of 2 x 8 is split between them, both steps as often
    r0, r1 = batches(2, 0, 0), batches(2, 1, 0)
    assert len(r0) == len(r1) and {i for b in r0 + r1 for i in b} == set(range(n))
    for a, b in zip(r0[:-1], r1[:-1], strict=True):
        assert np.ptp(lengths[a + b]) <= np.ptp(lengths) / 2
    assert batches(1, 0, 0, buckets=0) == [plain_order[i : i + batch] for i in range(0, n, batch)]


def test_learning_rate_schedules():
    assert [lr_factor("linear", 2, 10)(s) for s in (0, 1, 2, 6, 10)] == [0.5, 1.0, 1.0, 0.5, 0.0]
    cosine = lr_factor("cosine", 0, 10)
    assert cosine(0) == 1.0 and cosine(5) == pytest.approx(0.5) and cosine(10) == pytest.approx(0.0)
    assert lr_factor("linear", 0, float("inf"))(1000) == 1.0  # no total, no time budget: constant
    spent = [0.0]
    timed = lr_factor("linear", 0, 100, lambda: spent[0])  # the budget's end comes first: decay by time
    assert timed(10) == pytest.approx(0.9)
    spent[0] = 0.5
    assert timed(10) == pytest.approx(0.5) and lr_factor("linear", 0, float("inf"), lambda: 0.75)(3) == 0.25
    assert lr_factor("constant", 3, 10)(9) == 1.0


def test_tokenized_examples_are_cached(t5_dir, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(t5_dir)
    cache = tmp_path / "tok.npz"
    a = tokenize_examples(tok, ["alpha river", "gamma"], 8, cache)
    assert cache.is_file()
    b = tokenize_examples(tok, ["alpha river", "gamma"], 8, cache)
    np.testing.assert_array_equal(a.ids, b.ids)
    c = tokenize_examples(tok, ["alpha river", "beta"], 8, cache)  # other texts: not the stale cache
    assert list(c.row(1)) != list(a.row(1))
    assert list(a.row(0)) == tok("alpha river")["input_ids"]


def test_replace_ce_swaps_the_table_the_logits_use(t5_dir, t5_index, tmp_path):
    """The seam for CE-encoder variants that rebuild the table while training."""
    module, _ = _module(t5_dir, t5_index, tmp_path)
    model = module.model.eval()
    ids, mask = model.tokenize(["alpha river"])
    dec = torch.tensor([[model.start_id, 3]])
    new_ce = torch.randn_like(model.ce)
    module.replace_ce(new_ce, model.ce_token_ids.clone())
    assert torch.equal(model.ce, new_ce) and not model.ce.requires_grad
    with torch.no_grad():
        hidden, _ = model._decode(model.embed(dec), *model.encode(ids, mask))
        want = model.log_scale.exp() * model.output_scale * hidden @ new_ce.T
        assert torch.allclose(model(ids, mask, dec), want, atol=1e-5)
