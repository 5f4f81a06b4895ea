"""``validation.eval_datasets``: a training run scores its checkpoint zero-shot on other datasets
(each corpus indexed with the checkpoint, as ``npdecode eval --gr-model``) into its manifest."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from npdecode.cli import cli
from npdecode.errors import NpdecodeError
from npdecode.train.run import train_run
from tests.train.helpers import fast_config, load, toy_beir


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_datasets")
    return toy_beir(root / "A", n_docs=20, seed=0), toy_beir(root / "B", n_docs=12, seed=5)


def test_the_run_manifest_holds_zero_shot_scores_equal_to_eval(t5_dir, corpora, tmp_path):
    a, b = corpora
    out = tmp_path / "run"
    messages: list[str] = []
    run = train_run(load(fast_config(t5_dir, a, validation={"eval_datasets": [str(b)]})), out, say=messages.append)
    scores = run["metrics"]["zero_shot"]
    assert list(scores) == [str(b)] and list(scores[str(b)]) == ["np"]  # np: the run's variant
    metrics = scores[str(b)]["np"]
    assert 0.0 <= metrics["ndcg_cut_10"] <= 1.0 and "recall_100" in metrics
    assert "recall_1000" not in metrics  # the run retrieves 100 documents: no cutoff above
    assert json.loads((out / "manifest.json").read_text())["metrics"]["zero_shot"] == scores
    (index,) = (out / "zero_shot" / "gr-index").iterdir()
    assert json.loads((index / "manifest.json").read_text())["model"]["ref"] == str((out / "checkpoint").resolve())
    assert any(m.startswith("index of ") and "built in" in m for m in messages)
    assert any(m.startswith(f"zero-shot {b}: np nDCG@10") for m in messages)

    # the same numbers from the command line, over the same (reused) index
    result = CliRunner().invoke(
        cli,
        ["eval", "-d", str(b), "-r", "np", "--gr-model", str(out / "checkpoint"), "--cache-dir", str(out / "zero_shot"),
         "--device", "cpu", "--beam", "4", "-k", "100", "--json", str(tmp_path / "m.json")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"reused {index}" in result.output.replace("\n", "")
    cli_metrics = json.loads((tmp_path / "m.json").read_text())["retrievers"]["np"]["metrics"]
    assert {k: cli_metrics[k] for k in metrics} == pytest.approx(metrics)


def test_a_vanilla_run_scores_genre_by_default(t5_dir, corpora, tmp_path):
    config = fast_config(
        t5_dir, corpora[0], model={"variant": "vanilla"}, trainer={"fast_dev_run": True},
        validation={"eval_datasets": [str(corpora[1])]},
    )  # fmt: skip
    run = train_run(load(config), tmp_path / "run")
    assert list(run["metrics"]["zero_shot"][str(corpora[1])]) == ["genre"]


def test_a_run_without_eval_datasets_has_no_zero_shot_entry(t5_dir, corpora, tmp_path):
    run = train_run(load(fast_config(t5_dir, corpora[0], trainer={"fast_dev_run": True})), tmp_path / "run")
    assert "zero_shot" not in run["metrics"] and not (tmp_path / "run" / "zero_shot").exists()


@pytest.mark.parametrize(
    ("validation", "message"),
    [
        ({"eval_datasets": "beir/scifact"}, "valid tuple"),
        ({"eval_datasets": [3]}, "valid string"),
        ({"eval_datasets": ["x", "x"]}, "names one twice"),
        ({"eval_retrievers": []}, "at least 1"),
    ],
)
def test_bad_types_are_config_errors(t5_dir, corpora, validation, message):
    with pytest.raises(NpdecodeError, match=message):
        load(fast_config(t5_dir, corpora[0], validation=validation))


@pytest.mark.parametrize(
    ("validation", "message"),
    [
        ({"eval_datasets": ["nowhere"]}, "unknown dataset 'nowhere'"),
        ({"eval_datasets": ["beir/scifact"]}, "no corpus.jsonl"),  # data.data_dir has no copy
        ({"eval_datasets": ["nowhere"], "eval_retrievers": ["nope"]}, "unknown retriever 'nope'"),
    ],
)
def test_bad_datasets_and_retrievers_fail_before_the_run_starts(t5_dir, corpora, tmp_path, validation, message):
    data_dir = corpora[1].parent  # holds A/ and B/, no beir copy
    config = fast_config(t5_dir, corpora[0], data={"data_dir": str(data_dir)}, validation=validation)
    with pytest.raises(NpdecodeError, match=message):
        train_run(load(config), tmp_path / "run")
    assert not (tmp_path / "run").exists()
