"""``npdecode train`` end to end on tiny models: every variant and family, the run dir and its
index, overfitting a toy corpus through ``npdecode eval``, merge -> train, resume, bad input."""

from __future__ import annotations

import json

import pytest
import torch

from npdecode.cli import main
from npdecode.errors import NpdecodeError
from npdecode.model import load_model
from npdecode.train.run import train_run
from tests.train.helpers import fast_config, load, toy_beir, write_config

VARIANTS = {
    "vanilla": {"variant": "vanilla"},
    "np": {"variant": "np"},
    "np-train-ce": {"variant": "np", "train_ce": True, "learn_scale": True},
    "np-frozen-encoder": {"variant": "np", "freeze_encoder": True, "decoder_layers": 1},
    "np-token-emb": {"variant": "np", "token_embeddings": True},
}


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return toy_beir(tmp_path_factory.mktemp("toy") / "beir")


@pytest.mark.parametrize("family", ["t5", "bart", "bert2bert"])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_fast_dev_run_every_variant_and_family(request, family, variant, toy, tmp_path):
    backbone = request.getfixturevalue(f"{family}_dir")
    config = load(fast_config(backbone, toy, model=VARIANTS[variant], trainer={"fast_dev_run": True}))
    run = train_run(config, tmp_path / "run")
    assert run["training"]["steps"] == 1
    model = load_model(tmp_path / "run" / "checkpoint")
    assert type(model).__name__ == ("VanillaModel" if variant == "vanilla" else "NpModel")
    if variant == "np-frozen-encoder":
        assert model.backbone.model.config.to_dict() is not None
        assert _decoder_depth(model.backbone) == 1


def _decoder_depth(backbone) -> int:
    dec = backbone.decoder
    for attr in ("block", "layers"):
        if hasattr(dec, attr):
            return len(getattr(dec, attr))
    return len(backbone.model.decoder.bert.encoder.layer)


def test_run_dir_holds_checkpoint_index_logs_and_manifest(t5_dir, toy, tmp_path, capsys):
    out = tmp_path / "run"
    cfg = write_config(tmp_path / "c.yml", fast_config(t5_dir, toy, trainer={"max_epochs": 2, "max_steps": -1}))
    main(["train", str(cfg), "--out", str(out), "--set", "optim.lr=0.002"])
    for path in (
        "checkpoint/npdecode.json",
        "checkpoint/npdecode_ce.safetensors",
        "index/manifest.json",
        "lightning/last.ckpt",
        "lightning/best.ckpt",
        "logs/csv/metrics.csv",
        "config.yml",
        "manifest.json",
    ):
        assert (out / path).is_file(), path
    assert any((out / "logs" / "tensorboard").glob("events.*"))
    run = json.loads((out / "manifest.json").read_text())
    assert run["config"]["optim"]["lr"] == 0.002 and run["training"]["epochs"] == 2
    assert run["data"]["examples"] == {"query": 16, "index": 20, "pseudo": 20}
    assert set(run["metrics"]["validation"]) == {"ndcg_cut_10", "success_1", "Rprec"}
    assert 0.0 <= run["metrics"]["memorisation_success_1"] <= 1.0
    index_manifest = json.loads((out / "index" / "manifest.json").read_text())
    assert index_manifest["model"]["checkpoint"] == "../checkpoint"
    capsys.readouterr()
    main(["search", str(out / "index"), "alpha river", "-k", "3"])  # decodes with the trained checkpoint
    assert len(capsys.readouterr().out.strip().splitlines()) == 3
    main(["verify", str(out)])  # index/ and checkpoint/ record every file they hold (exit 0)
    assert "index (index): all" in capsys.readouterr().out
    with pytest.raises(SystemExit) as err:  # a finished run is never overwritten
        main(["train", str(cfg), "--out", str(out)])
    assert err.value.code == 2 and "finished run" in capsys.readouterr().err


@pytest.mark.parametrize("variant", ["np", "vanilla"])
def test_overfit_toy_corpus_retrieves_every_training_query_through_eval(t5_dir, toy, tmp_path, capsys, variant):
    """train -> index -> eval: a model trained long enough on 20 documents finds the right one for
    every training query."""
    out = tmp_path / "run"
    config = fast_config(
        t5_dir,
        toy,
        model={"variant": variant, "logit_scale": 1.0},
        data={"query_repeat": 4},
        optim={"lr": 1e-2, "grad_clip": 1.0},
        trainer={"max_epochs": 60, "max_steps": -1},
        validation={"queries": 0},
    )
    train_run(load(config), out)
    retriever = "genre" if variant == "vanilla" else "np"
    main(
        [
            "eval",
            "--dataset",
            str(toy),
            "--split",
            "train",
            "--retriever",
            retriever,
            "--index",
            str(out / "index"),
            "--json",
            str(tmp_path / "m.json"),
            "--k",
            "10",
        ]
    )
    metrics = json.loads((tmp_path / "m.json").read_text())["retrievers"][retriever]["metrics"]
    assert metrics["success_1"] == 1.0


def test_merge_then_train_then_eval_from_one_config(tmp_path, toy, capsys):
    from tests.tiny_models import build_t5

    a, b = build_t5(tmp_path / "a", seed=0), build_t5(tmp_path / "b", seed=1)
    recipe = tmp_path / "recipe.yml"
    recipe.write_text(
        f"merge_method: linear\nmodels:\n  - model: {a}\n    parameters: {{weight: 0.5}}\n"
        f"  - model: {b}\n    parameters: {{weight: 0.5}}\ndtype: float32\n"
    )
    out = tmp_path / "run"
    run = train_run(load(fast_config(recipe, toy)), out)
    assert (out / "backbone" / "config.json").is_file() and run["backbone"]["ref"] == str(out / "backbone")
    main(
        [
            "eval",
            "--dataset",
            str(toy),
            "--retriever",
            "bm25",
            "--retriever",
            "np",
            "--index",
            str(out / "index"),
            "--json",
            str(tmp_path / "m.json"),
        ]
    )
    assert set(json.loads((tmp_path / "m.json").read_text())["retrievers"]) == {"bm25", "np"}


def test_resume_continues_the_same_run(t5_dir, toy, tmp_path, monkeypatch):
    """A run killed after epoch 2 and resumed ends with the weights of an uninterrupted run."""
    import pytorch_lightning as pl

    import npdecode.train.trainer as trainer_mod

    config = load(fast_config(t5_dir, toy, trainer={"max_epochs": 4, "max_steps": -1}))
    train_run(config, tmp_path / "whole")

    class Crash(pl.Callback):
        def on_train_epoch_start(self, trainer, module):
            if trainer.current_epoch == 2:
                raise RuntimeError("killed")

    make = trainer_mod.make_trainer

    def crashing(*args, **kwargs):
        trainer, ckpt = make(*args, **kwargs)
        trainer.callbacks.append(Crash())
        return trainer, ckpt

    monkeypatch.setattr(trainer_mod, "make_trainer", crashing)
    with pytest.raises(RuntimeError, match="killed"):
        train_run(config, tmp_path / "cut")
    assert not (tmp_path / "cut" / "manifest.json").exists()
    monkeypatch.setattr(trainer_mod, "make_trainer", make)
    with pytest.raises(NpdecodeError, match="--resume"):
        train_run(config, tmp_path / "cut")
    run = train_run(config, tmp_path / "cut", resume=True)
    whole = json.loads((tmp_path / "whole" / "manifest.json").read_text())
    assert run["training"]["steps"] == whole["training"]["steps"]
    a = load_model(tmp_path / "whole" / "checkpoint").state_dict()
    b = load_model(tmp_path / "cut" / "checkpoint").state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_two_process_ddp_trains_one_checkpoint(t5_dir, toy, tmp_path):
    config = load(fast_config(t5_dir, toy, trainer={"devices": 2, "max_epochs": 1, "max_steps": -1}))
    run = train_run(config, tmp_path / "run")
    assert run["training"]["steps"] == 4  # 56 examples, 28 per process, batches of 8
    assert (tmp_path / "run" / "checkpoint" / "npdecode.json").is_file()
    trained = load_model(tmp_path / "run" / "checkpoint").backbone.model.state_dict()
    start = load_model(t5_dir).backbone.model.state_dict()
    assert any(not torch.equal(trained[k], start[k]) for k in start)  # the children's weights came back
    assert sorted(p.name for p in (tmp_path / "run").iterdir() if p.name.startswith("checkpoint")) == ["checkpoint"]


def test_dataset_without_training_queries_trains_on_indexing_examples(t5_dir, tmp_path, capsys):
    folder = toy_beir(tmp_path / "bare", train_queries=False)
    docs = [json.loads(line) for line in (folder / "corpus.jsonl").read_text().splitlines()]
    for doc in docs[:5]:  # empty titles: identifiers come from the text
        doc["title"] = ""
    (folder / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    messages = []
    run = train_run(load(fast_config(t5_dir, folder)), tmp_path / "run", say=messages.append)
    assert run["data"]["examples"]["query"] == 0 and run["data"]["examples"]["index"] == 20
    assert run["data"]["validation"]["kind"] == "memorisation"
    assert any("indexing examples only" in m for m in messages)


@pytest.mark.parametrize("problem", ["unknown-key", "missing-backbone", "empty-corpus", "no-dataset", "bad-set"])
def test_bad_input_is_one_line_and_leaves_no_run_dir(t5_dir, toy, tmp_path, capsys, problem):
    data = fast_config(t5_dir, toy)
    extra = []
    if problem == "unknown-key":
        data["model"]["varaint"] = "np"
    elif problem == "missing-backbone":
        data["backbone"] = str(tmp_path / "nowhere")
    elif problem == "empty-corpus":
        empty = tmp_path / "empty"
        empty.mkdir()
        (empty / "corpus.jsonl").write_text("")
        data["data"]["dataset"] = str(empty)
    elif problem == "no-dataset":
        del data["data"]["dataset"]
    else:
        extra = ["--set", "optim.lr"]
    cfg = write_config(tmp_path / "c.yml", data)
    with pytest.raises(SystemExit) as err:
        main(["train", str(cfg), "--out", str(tmp_path / "run"), *extra])
    message = capsys.readouterr().err.strip()
    assert err.value.code == 2 and message.startswith("error:") and "\n" not in message and "Traceback" not in message
    assert not (tmp_path / "run").exists()


def test_resume_with_a_checkpoint_of_another_index_is_refused(t5_dir, toy, tmp_path):
    import shutil

    config = load(fast_config(t5_dir, toy, trainer={"max_epochs": 1, "max_steps": -1}))
    train_run(config, tmp_path / "a")
    other = toy_beir(tmp_path / "other", n_docs=12, seed=5)
    config_b = load(fast_config(t5_dir, other, trainer={"max_epochs": 1, "max_steps": -1}))
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "lightning").mkdir()
    shutil.copy(tmp_path / "a" / "lightning" / "last.ckpt", tmp_path / "b" / "lightning" / "last.ckpt")
    with pytest.raises(NpdecodeError, match="another model or index"):
        train_run(config_b, tmp_path / "b", resume=True)


def test_token_embeddings_are_trained_saved_and_reach_documents_appended_later(t5_dir, toy, tmp_path):
    """model.token_embeddings: the run's checkpoint holds the trained E; searching an index with
    documents appended after training scores their rows as CE + E of their tokens."""
    import torch

    from npdecode.index.appender import append_to_index
    from npdecode.search.retrievers.generative import GenerativeRetriever

    out = tmp_path / "run"
    train_run(load(fast_config(t5_dir, toy, model={"token_embeddings": True}, trainer={"max_steps": 6})), out)
    trained = load_model(out / "checkpoint")
    assert trained.token_emb is not None and torch.count_nonzero(trained.token_emb) > 0
    new = tmp_path / "new.jsonl"
    new.write_text(
        json.dumps({"_id": "n1", "title": "zebra crossing river", "text": "a new document about zebra rivers"}) + "\n"
    )
    append_to_index(new, out / "index", runtime={"progress": False})
    retriever = GenerativeRetriever(out / "index", kind="np")
    model = retriever.model
    assert model.vocab_size > trained.vocab_size and torch.equal(model.token_emb, trained.token_emb)
    table = model.table()
    rows = torch.arange(trained.vocab_size, model.vocab_size)
    torch.testing.assert_close(table[rows], model.ce[rows] + trained.token_emb[model.ce_token_ids[rows]])
    hits = retriever.search({"q": "zebra crossing river"}, 5)["q"]
    assert hits and len(hits) <= 5


def test_token_embeddings_are_an_np_option(t5_dir, toy):
    with pytest.raises(Exception, match="token_embeddings"):
        load(fast_config(t5_dir, toy, model={"variant": "vanilla", "token_embeddings": True}))
