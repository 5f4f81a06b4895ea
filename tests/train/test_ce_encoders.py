"""CE-encoder variants: ``async`` (CE rebuilt from the encoder being trained) and ``contrastive``
(stage 1 aligns the first decoder state with the gold CE rows, then CE is re-extracted).

Oracles: the async rebuild equals a fresh ``npdecode index`` with the weights of that moment;
the contrastive loss equals a float64 computation by hand; its positives are the rows read off
the identifier by hand."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from npdecode.errors import NpdecodeError
from npdecode.index.builder import build_index
from npdecode.index.layout import load_index
from npdecode.model import load_model
from npdecode.train.contrastive import contrastive_loss, positives_of
from npdecode.train.run import train_run
from tests.train.helpers import fast_config, load, toy_beir


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return toy_beir(tmp_path_factory.mktemp("toy") / "beir")


def _metric_column(path, name: str) -> list[float]:
    with open(path, encoding="utf-8") as fh:
        return [float(r[name]) for r in csv.DictReader(fh) if r.get(name)]


def _with_callback(monkeypatch, callback: pl.Callback) -> None:
    import npdecode.train.trainer as trainer_mod

    make = trainer_mod.make_trainer

    def with_probe(*args, **kwargs):
        trainer, ckpt = make(*args, **kwargs)
        trainer.callbacks.insert(len(trainer.callbacks) - 1, callback)  # after AsyncCE, before the checkpoint
        return trainer, ckpt

    monkeypatch.setattr(trainer_mod, "make_trainer", with_probe)


# ---- async --------------------------------------------------------------------------------------


def _async_config(backbone, toy, epochs: int, **model) -> dict:
    """async CE, one batch per epoch (so every epoch after the first starts with a rebuild)."""
    return fast_config(
        backbone,
        toy,
        model={"ce_encoder": "async", **model},
        data={"batch_size": 64},
        optim={"lr": 1e-2},
        trainer={"max_epochs": epochs, "max_steps": -1},
        validation={"queries": 0},
    )


@pytest.mark.parametrize(("top", "gib"), [(None, 4.0), (1, 4.0), (1, 0.0)])
def test_async_rebuild_equals_a_fresh_index_with_the_current_weights(t5_dir, toy, tmp_path, monkeypatch, top, gib):
    """The rebuild at the start of epoch 2 (the second one) is a fresh index of the weights of
    that moment; with only the top encoder layer training, the run's first index was built in
    memory (the same as `npdecode index`) keeping the states below that layer, and the rebuilds
    ran the top layer alone on them (none kept with a 0 GiB allowance)."""
    seen = {}

    class Probe(pl.Callback):  # runs right after the rebuild at the start of epoch 2
        def on_train_epoch_start(self, trainer, module):
            rebuilder = next(c for c in trainer.callbacks if type(c).__name__ == "AsyncCE").rebuilder
            if trainer.current_epoch == 0:
                seen.update(first_ce=module.model.ce.detach().clone(), kept_at_start=len(rebuilder.bottom))
            if trainer.current_epoch == 2:
                backbone = module.model.backbone
                backbone.model.save_pretrained(tmp_path / "now")
                backbone.tokenizer.save_pretrained(tmp_path / "now")
                seen.update(
                    ce=module.model.ce.detach().clone(),
                    tokens=module.model.ce_token_ids.clone(),
                    targets=module.targets(),
                    ce_epoch=int(module.ce_epoch),
                    kept=len(rebuilder.bottom),
                )

    _with_callback(monkeypatch, Probe())
    config = _async_config(t5_dir, toy, epochs=3, train_encoder_layers=top, async_cache_gib=gib)
    train_run(load(config), tmp_path / "run")
    fresh = load_index(build_index(toy / "corpus.jsonl", tmp_path / "now", tmp_path / "fresh", load(config).index))
    assert seen["ce_epoch"] == 2
    assert (seen["kept"] > 0) is (seen["kept_at_start"] > 0) is (top is not None and gib > 0)
    assert torch.allclose(seen["ce"], torch.from_numpy(fresh.vectors), atol=1e-6)
    assert torch.equal(seen["tokens"], torch.from_numpy(fresh.token_ids))
    assert seen["targets"] == [g.ce + [fresh.eos_ce] for g in fresh.groups]
    base = load_index(build_index(toy / "corpus.jsonl", t5_dir, tmp_path / "base", load(config).index))
    assert torch.allclose(seen["first_ce"], torch.from_numpy(base.vectors), atol=1e-6)  # the run's first index
    assert not np.allclose(base.vectors, fresh.vectors, atol=1e-4)  # the encoder did move
    changed = _metric_column(tmp_path / "run" / "logs" / "csv" / "metrics.csv", "async/targets_changed")
    assert len(changed) == 2 and all(0 <= c <= len(fresh.groups) for c in changed)


def test_async_run_index_is_the_table_the_model_trained_with(t5_dir, toy, tmp_path, capsys):
    from npdecode.cli import main

    config = _async_config(t5_dir, toy, epochs=3)
    train_run(load(config), tmp_path / "run")
    index = load_index(tmp_path / "run" / "index")
    model = load_model(tmp_path / "run" / "checkpoint")
    assert torch.equal(torch.from_numpy(index.vectors), model.ce.detach())
    assert torch.equal(torch.from_numpy(index.token_ids), model.ce_token_ids)
    base = load_index(build_index(toy / "corpus.jsonl", t5_dir, tmp_path / "base", load(config).index))
    assert not np.allclose(base.vectors, index.vectors, atol=1e-4)
    assert (
        json.loads((tmp_path / "run" / "index" / "manifest.json").read_text())["model"]["checkpoint"] == "../checkpoint"
    )
    assert not any(p.name.startswith(".index") for p in (tmp_path / "run").iterdir())
    capsys.readouterr()
    main(["search", str(tmp_path / "run" / "index"), "alpha river", "-k", "3"])
    assert len(capsys.readouterr().out.strip().splitlines()) == 3


def test_async_resume_continues_with_the_rebuilt_table(t5_dir, toy, tmp_path, monkeypatch):
    """Killed after the rebuild of epoch 2, resumed: the same weights, table and index as a run
    that was never interrupted."""
    config = load(_async_config(t5_dir, toy, epochs=4))
    train_run(config, tmp_path / "whole")

    class Crash(pl.Callback):
        def on_train_epoch_start(self, trainer, module):
            if trainer.current_epoch == 2:
                raise RuntimeError("killed")

    import npdecode.train.trainer as trainer_mod

    make = trainer_mod.make_trainer
    _with_callback(monkeypatch, Crash())
    with pytest.raises(RuntimeError, match="killed"):
        train_run(config, tmp_path / "cut")
    monkeypatch.setattr(trainer_mod, "make_trainer", make)
    train_run(config, tmp_path / "cut", resume=True)
    a = load_model(tmp_path / "whole" / "checkpoint").state_dict()
    b = load_model(tmp_path / "cut" / "checkpoint").state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    ia, ib = load_index(tmp_path / "whole" / "index"), load_index(tmp_path / "cut" / "index")
    assert [g.ce for g in ia.groups] == [g.ce for g in ib.groups]


def test_async_config_mistakes_are_refused(t5_dir, toy):
    with pytest.raises(NpdecodeError, match="freeze_encoder"):
        load(fast_config(t5_dir, toy, model={"ce_encoder": "async", "freeze_encoder": True}))
    with pytest.raises(NpdecodeError, match="np\n?\\s*variant"):
        load(fast_config(t5_dir, toy, model={"variant": "vanilla", "ce_encoder": "contrastive"}))
    with pytest.raises(NpdecodeError, match="raw_ce"):
        load(fast_config(t5_dir, toy, model={"ce_encoder": "async"}, index={"raw_ce": True}))


# ---- contrastive --------------------------------------------------------------------------------


def test_contrastive_positives_are_the_gold_identifier_rows():
    eos = 1
    labels = torch.tensor([[7, 4, 7, 9, eos, -100], [5, eos, -100, -100, -100, -100], [8, 3, eos, -100, -100, -100]])
    assert [p.tolist() for p in positives_of(labels, eos, "identifier")] == [[4, 7, 9], [5], [3, 8]]
    assert [p.tolist() for p in positives_of(labels, eos, "first")] == [[7], [5], [8]]


@pytest.mark.parametrize("negatives", ["all_ce", "in_batch"])
def test_contrastive_loss_matches_a_float64_computation_by_hand(negatives):
    g = torch.Generator().manual_seed(0)
    h, ce = torch.randn(3, 6, generator=g), torch.randn(12, 6, generator=g)
    positives = [torch.tensor([4, 7, 9]), torch.tensor([5]), torch.tensor([3, 8])]
    got = contrastive_loss(h, ce, positives, negatives)
    cand = list(range(12)) if negatives == "all_ce" else [3, 4, 5, 7, 8, 9]
    total = 0.0
    for i, pos in enumerate(positives):
        s = {j: float(h[i].double() @ ce[j].double()) for j in cand}
        log_z = np.log(sum(np.exp(v) for v in s.values()))
        total += np.mean([log_z - s[p] for p in pos.tolist()])
    assert abs(float(got) - total / 3) < 1e-5


def test_contrastive_stage_loss_falls_and_stage_two_starts_from_its_weights(t5_dir, toy, tmp_path):
    config = fast_config(
        t5_dir,
        toy,
        model={"ce_encoder": "contrastive"},
        contrastive={"max_epochs": 20, "batch_size": 16, "lr": 1e-2, "warmup_steps": 0, "scale": 1.0},
        trainer={"max_epochs": 1, "max_steps": -1},
    )
    train_run(load(config), tmp_path / "run")
    losses = _metric_column(tmp_path / "run" / "contrastive" / "logs" / "csv" / "metrics.csv", "contrastive/loss")
    assert len(losses) >= 40 and np.mean(losses[-8:]) < 0.8 * np.mean(losses[:8])
    stage1 = tmp_path / "run" / "contrastive" / "backbone"
    manifest = json.loads((tmp_path / "run" / "index" / "manifest.json").read_text())
    assert manifest["model"]["ref"] == str(stage1.resolve())  # CE re-extracted with the stage-1 encoder
    run = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert run["backbone"]["ref"] == str(stage1)
    base = load_index(tmp_path / "run" / "contrastive" / "base-index")
    assert not np.allclose(base.vectors, load_index(tmp_path / "run" / "index").vectors, atol=1e-4)


def test_contrastive_resumes_in_stage_one(t5_dir, toy, tmp_path, monkeypatch):
    config = load(
        fast_config(
            t5_dir,
            toy,
            model={"ce_encoder": "contrastive"},
            contrastive={"max_epochs": 3, "batch_size": 16},
            trainer={"max_epochs": 1, "max_steps": -1},
        )
    )

    class Crash(pl.Callback):
        def on_train_epoch_start(self, trainer, module):
            if trainer.current_epoch == 2 and type(module).__name__ == "ContrastiveModule":
                raise RuntimeError("killed")

    import npdecode.train.trainer as trainer_mod

    make = trainer_mod.make_trainer
    _with_callback(monkeypatch, Crash())
    with pytest.raises(RuntimeError, match="killed"):
        train_run(config, tmp_path / "run")
    assert not (tmp_path / "run" / "contrastive" / "backbone").exists()
    monkeypatch.setattr(trainer_mod, "make_trainer", make)
    messages = []
    train_run(config, tmp_path / "run", resume=True, say=messages.append)
    assert any("resuming contrastive stage 1" in m for m in messages), messages
    saved = torch.load(tmp_path / "run" / "contrastive" / "lightning" / "last.ckpt", weights_only=False)
    assert saved["epoch"] == 2  # the third epoch ran after the resume, not from scratch
    messages.clear()
    with pytest.raises(NpdecodeError, match="finished run"):
        train_run(config, tmp_path / "run", resume=True, say=messages.append)


# ---- every family, fast_dev_run and ddp -------------------------------------------------------------


@pytest.mark.parametrize("family", ["t5", "bart", "bert2bert"])
@pytest.mark.parametrize("ce_encoder", ["async", "contrastive"])
def test_fast_dev_run_every_family(request, family, ce_encoder, toy, tmp_path):
    backbone = request.getfixturevalue(f"{family}_dir")
    config = load(fast_config(backbone, toy, model={"ce_encoder": ce_encoder}, trainer={"fast_dev_run": True}))
    run = train_run(config, tmp_path / "run")
    assert run["training"]["steps"] == 1
    assert type(load_model(tmp_path / "run" / "checkpoint")).__name__ == "NpModel"


@pytest.mark.parametrize("family", ["bart", "bert2bert"])
def test_async_rebuild_on_other_families(request, family, toy, tmp_path):
    backbone = request.getfixturevalue(f"{family}_dir")
    config = _async_config(backbone, toy, epochs=2)
    train_run(load(config), tmp_path / "run")
    assert len(_metric_column(tmp_path / "run" / "logs" / "csv" / "metrics.csv", "async/targets_changed")) == 1
    index, model = load_index(tmp_path / "run" / "index"), load_model(tmp_path / "run" / "checkpoint")
    assert torch.equal(torch.from_numpy(index.vectors), model.ce.detach())


@pytest.mark.parametrize("ce_encoder", ["async", "contrastive"])
def test_two_process_ddp(t5_dir, toy, tmp_path, ce_encoder):
    config = load(
        fast_config(
            t5_dir,
            toy,
            model={"ce_encoder": ce_encoder},
            validation={"queries": 0},
            contrastive={"max_epochs": 1, "batch_size": 8},
            trainer={"devices": 2, "max_epochs": 2, "max_steps": -1},
        )
    )
    run = train_run(config, tmp_path / "run")
    assert run["training"]["steps"] == 8  # 2 epochs x 60 examples, 30 per process, batches of 8
    index, model = load_index(tmp_path / "run" / "index"), load_model(tmp_path / "run" / "checkpoint")
    assert torch.equal(torch.from_numpy(index.vectors), model.ce.detach())
    if ce_encoder == "async":  # the rebuild of epoch 1 ran in both processes, shards exchanged
        changed = _metric_column(tmp_path / "run" / "logs" / "csv" / "metrics.csv", "async/targets_changed")
        assert len(changed) == 1
    else:
        assert (tmp_path / "run" / "contrastive" / "backbone" / "config.json").is_file()


@pytest.mark.parametrize("ce_encoder", ["async", "contrastive"])
def test_token_embeddings_with_the_other_ce_encoders(t5_dir, toy, tmp_path, ce_encoder):
    """async: the rebuilt tables keep the token embeddings (they are per token, not per row) and
    the run's index + E is what the checkpoint scores; contrastive: stage 1 has none, stage 2
    starts them at zero and trains them."""
    config = fast_config(
        t5_dir,
        toy,
        model={"ce_encoder": ce_encoder, "token_embeddings": True},
        data={"batch_size": 64},
        optim={"lr": 1e-2},
        contrastive={"max_steps": 2, "batch_size": 8},
        trainer={"max_epochs": 3, "max_steps": -1},
        validation={"queries": 0},
    )
    train_run(load(config), tmp_path / "run")
    model = load_model(tmp_path / "run" / "checkpoint")
    index = load_index(tmp_path / "run" / "index")
    assert model.token_emb is not None and torch.count_nonzero(model.token_emb) > 0
    assert torch.equal(torch.from_numpy(index.vectors), model.ce.detach())  # the index keeps the plain CE
    torch.testing.assert_close(model.table(), model.ce + model.token_emb[model.ce_token_ids])
