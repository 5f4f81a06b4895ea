"""Index config (strict YAML) and the np / genre retrievers in the evaluation harness registry."""

from __future__ import annotations

from pathlib import Path

import pytest

from npdecode.errors import NpdecodeError
from npdecode.index.builder import build_index
from npdecode.index.config import IndexConfig, load_index_config
from npdecode.search import registry
from tests.index.helpers import fast_config, write_jsonl
from tests.tiny_models import toy_corpus

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_shipped_configs_load_and_unknown_keys_are_refused(tmp_path):
    assert load_index_config(CONFIGS / "index-default.yml") == IndexConfig()
    assert load_index_config(CONFIGS / "index-raw.yml").k == 0
    assert load_index_config(CONFIGS / "index-default.yml", k=7, devices=None).k == 7
    bad = tmp_path / "bad.yml"
    bad.write_text("k: 5\nclusters: 3\n")
    with pytest.raises(NpdecodeError, match="bad.yml.*clusters"):
        load_index_config(bad)
    bad.write_text("k: -1\n")
    with pytest.raises(NpdecodeError, match="bad.yml.*k"):
        load_index_config(bad)
    with pytest.raises(NpdecodeError, match="not found"):
        load_index_config(tmp_path / "missing.yml")


def test_np_and_genre_are_retrievers_of_the_eval_harness(t5_dir, tmp_path):
    assert {"np", "genre"} <= set(registry.retriever_names())
    with pytest.raises(ValueError, match="already registered"):
        registry.register_retriever("np", lambda corpus, options: None)
    corpus = toy_corpus(6, seed=4)
    path = write_jsonl(corpus, tmp_path / "c.jsonl")
    build_index(path, t5_dir, tmp_path / "idx", fast_config())
    with pytest.raises(NpdecodeError, match="--index"):
        registry.build_retriever("np", path, {"device": "cpu"})
    for name in ("np", "genre"):
        retriever = registry.build_retriever(name, path, {"index": tmp_path / "idx", "device": "cpu", "batch_size": 2})
        assert isinstance(retriever, registry.Retriever) and retriever.name == name
        run = retriever.search({"a": "alpha", "b": "gold river", "c": "storm"}, k=4)
        assert sorted(run) == ["a", "b", "c"]
        for docs in run.values():
            assert len(docs) == 4 and set(docs) <= set(corpus)
            assert list(docs.values()) == sorted(docs.values(), reverse=True)


def test_eval_command_runs_np_and_genre_on_a_beir_folder(t5_dir, tmp_path, capsys):
    """`npdecode eval --dataset FOLDER --retriever np --index IDX` end to end, beside BM25."""
    import json

    from npdecode.cli import main

    corpus = toy_corpus(8, seed=5)
    folder = tmp_path / "toy"
    (folder / "qrels").mkdir(parents=True)
    write_jsonl(corpus, folder / "corpus.jsonl")
    ids = list(corpus)
    (folder / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": f"q{i}", "text": corpus[d]["title"]}) + "\n" for i, d in enumerate(ids[:4]))
    )
    (folder / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\t{d}\t1\n" for i, d in enumerate(ids[:4]))
    )
    build_index(folder, t5_dir, tmp_path / "idx", fast_config())
    out = tmp_path / "m.json"
    main(["eval", "-d", str(folder), "-r", "bm25", "-r", "np", "-r", "genre", "--index", str(tmp_path / "idx"),
          "--device", "cpu", "--k", "5", "--json", str(out), "--cache-dir", str(tmp_path / "cache")])  # fmt: skip
    report = json.loads(out.read_text())
    assert list(report["retrievers"]) == ["bm25", "np", "genre"]
    for name in ("np", "genre"):
        metrics = report["retrievers"][name]["metrics"]
        assert 0.0 <= metrics["ndcg_cut_10"] <= 1.0 and set(report["retrievers"][name]["per_query"]) == {
            "q0",
            "q1",
            "q2",
            "q3",
        }
    assert "np" in capsys.readouterr().out
