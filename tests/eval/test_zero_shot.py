"""``npdecode eval`` over several datasets with ``--gr-model`` and no ``--index``: each corpus is
indexed with the checkpoint once (cached), the BEIR-style table and JSON average the datasets."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from npdecode.cli import cli
from npdecode.runs import read_run
from npdecode.train.run import train_run
from tests.train.helpers import fast_config, load, toy_beir


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("zero_shot")
    return toy_beir(root / "A", n_docs=20, seed=0), toy_beir(root / "B", n_docs=12, seed=5)


@pytest.fixture(scope="module")
def trained(t5_dir, corpora, tmp_path_factory) -> Path:
    """A tiny Np run trained a few steps on A; the tests copy it before changing anything."""
    out = tmp_path_factory.mktemp("run") / "run"
    train_run(load(fast_config(t5_dir, corpora[0])), out)
    return out


@pytest.fixture
def builds(monkeypatch) -> list[Path]:
    """The index dirs build_index was asked to make during the test."""
    from npdecode.index import builder

    made: list[Path] = []
    real = builder.build_index

    def counting(corpus, model, out, config=None, **kw):
        made.append(Path(out))
        return real(corpus, model, out, config, **kw)

    monkeypatch.setattr(builder, "build_index", counting)
    return made


def _eval(*args: str):
    result = CliRunner().invoke(cli, ["eval", "--device", "cpu", "--beam", "4", "-k", "20", *args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def test_two_datasets_one_table_cached_indexes_and_rebuild_on_a_changed_checkpoint(trained, corpora, tmp_path, builds):
    a, b = corpora
    cache = tmp_path / "cache"
    args = ["-d", str(a), "-d", str(b), "-r", "bm25", "-r", "np", "--gr-model", str(trained / "checkpoint"),
            "--cache-dir", str(cache)]  # fmt: skip
    first = _eval(*args, "--json", str(tmp_path / "m.json"), "--run", str(tmp_path / "r.trec"))
    assert len(builds) == 2 and len({p.name for p in builds}) == 2  # one index per corpus
    assert all(p.parent == cache / "gr-index" for p in builds)
    assert "index of A: built in" in first.output and "index of B: built in" in first.output

    report = json.loads((tmp_path / "m.json").read_text())
    assert list(report["datasets"]) == [str(a), str(b)]
    for retriever in ("bm25", "np"):
        for metric, mean in report["average"][retriever].items():
            values = [report["datasets"][str(d)]["retrievers"][retriever]["metrics"][metric] for d in (a, b)]
            assert mean == pytest.approx(sum(values) / 2)
    # each per-dataset report is the single-dataset report of today
    assert set(report["datasets"][str(b)]) >= {"dataset", "num_queries", "retrievers", "reference"}
    # the printed summary: columns A, B, avg; the avg cell is the JSON's average
    table = first.stdout[first.stdout.index("nDCG@10 (test)") :]
    assert "avg" in table and "R@100 (test)" in table
    np_row = next(line for line in table.splitlines() if " np " in line)
    assert f"{report['average']['np']['ndcg_cut_10']:.4f}" in np_row
    for d in ("A", "B"):
        for retriever in ("bm25", "np"):
            assert read_run(tmp_path / f"r.{d}.{retriever}.trec")

    second = _eval(*args)
    assert len(builds) == 2 and second.output.count(": reused ") == 2  # nothing rebuilt

    # a changed checkpoint (one weight perturbed, same path) gets a new index
    moved = tmp_path / "run"
    shutil.copytree(trained, moved)
    _perturb(moved / "checkpoint")
    _eval("-d", str(b), "-r", "np", "--gr-model", str(moved / "checkpoint"), "--cache-dir", str(cache))
    assert len(builds) == 3
    _perturb(moved / "checkpoint")
    _eval("-d", str(b), "-r", "np", "--gr-model", str(moved / "checkpoint"), "--cache-dir", str(cache))
    assert len(builds) == 4 and len({p.name for p in builds}) == 4


def _perturb(checkpoint: Path) -> None:
    from safetensors.torch import load_file, save_file

    weights = load_file(str(checkpoint / "model.safetensors"))
    name = next(n for n in weights if "encoder" in n and weights[n].is_floating_point())
    weights[name] = weights[name] + 0.01
    save_file(weights, str(checkpoint / "model.safetensors"), metadata={"format": "pt"})


def test_the_index_uses_the_run_config_and_the_np_model_takes_its_table(trained, corpora, tmp_path):
    """The cache index names the checkpoint and carries the run's index config; np decodes with
    the checkpoint's weights over that index's CE table (another corpus than the training one)."""
    import torch

    from npdecode.eval.zero_shot import gr_index
    from npdecode.index.layout import load_index
    from npdecode.model import load_model
    from npdecode.search.retrievers.generative import GenerativeRetriever

    checkpoint = trained / "checkpoint"
    said: list[str] = []
    path = gr_index(corpora[1] / "corpus.jsonl", checkpoint, tmp_path, device="cpu", say=said.append)
    index = load_index(path)
    run_config = json.loads((trained / "index" / "manifest.json").read_text())["config"]
    assert index.manifest.model.ref == str(checkpoint.resolve())
    assert index.manifest.config["max_length"] == run_config["max_length"] == 64
    assert index.manifest.config["shard_size"] == run_config["shard_size"]
    assert said == [f"index of {corpora[1] / 'corpus.jsonl'}: built in {said[0].split('built in ')[1]}"]
    model = GenerativeRetriever(path, kind="np", gr_model=str(checkpoint), device="cpu").model
    trained_model = load_model(checkpoint)
    assert model.vocab_size == len(index.vectors)
    torch.testing.assert_close(model.ce.detach(), torch.from_numpy(index.vectors))
    torch.testing.assert_close(model.log_scale.detach(), trained_model.log_scale.detach())
    assert gr_index(corpora[1] / "corpus.jsonl", checkpoint, tmp_path, device="cpu", say=said.append) == path
    assert said[-1] == f"index of {corpora[1] / 'corpus.jsonl'}: reused {path}"


def test_one_dataset_keeps_the_single_report_and_mistakes_are_one_line(trained, corpora, tmp_path):
    a, b = corpora
    ckpt = str(trained / "checkpoint")
    _eval(
        "-d", str(b), "-r", "np", "--gr-model", ckpt, "--cache-dir", str(tmp_path), "--json", str(tmp_path / "m.json")
    )
    report = json.loads((tmp_path / "m.json").read_text())
    assert report["dataset"] == str(b) and list(report["retrievers"]) == ["np"] and "datasets" not in report

    runner = CliRunner()
    cases = {
        "--index with several datasets": ["-d", str(a), "-d", str(b), "-r", "np", "--index", str(trained / "index")],
        "--dataset given twice": ["-d", str(a), "-d", str(a)],
        "not a local checkpoint directory": ["-d", str(b), "-r", "np", "--gr-model", "some/hub-id"],
    }
    for message, args in cases.items():
        result = runner.invoke(cli, ["eval", "--cache-dir", str(tmp_path), *args])
        assert result.exit_code != 0 and message in str(result.exception), (message, result.exception)
