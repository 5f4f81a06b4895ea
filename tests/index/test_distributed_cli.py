"""Two encoding processes build the same index as one; the index and search commands."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from safetensors import safe_open

from npdecode.cli import main
from npdecode.index import builder
from npdecode.index.builder import build_index
from npdecode.index.layout import load_index
from npdecode.trie import Trie
from tests.index.helpers import fast_config, write_jsonl
from tests.tiny_models import toy_corpus


@pytest.mark.slow
def test_two_processes_build_the_same_index_as_one(t5_dir, tmp_path, monkeypatch):
    """Encoding and clustering (token ranges, sampled tokens, shard assignments) split over two
    processes give the one-process index."""
    corpus = write_jsonl(toy_corpus(14, seed=9), tmp_path / "c.jsonl")
    spread = {"k": 2, "kmeans_sample": 3, "cluster_memory_mb": 1e-3}
    build_index(corpus, t5_dir, tmp_path / "one", fast_config(devices=1, **spread))
    kept = tmp_path / "work"

    def keep_work_dir(path, **kwargs):  # the build deletes its work dir at the end: keep it here
        if Path(path).name.endswith(".partial"):
            shutil.move(path, kept)
        else:
            shutil.rmtree(path, **kwargs)

    monkeypatch.setattr(builder, "shutil", SimpleNamespace(rmtree=keep_work_dir))
    build_index(corpus, t5_dir, tmp_path / "two", fast_config(devices=2, strategy="ddp_spawn", **spread))
    makers = {safe_open(str(f), "numpy").metadata()["rank"] for f in (kept / "clusters").glob("*.safetensors")}
    assert makers == {"0", "1"}  # both processes clustered ranges and assigned shards
    one, two = load_index(tmp_path / "one"), load_index(tmp_path / "two")
    np.testing.assert_allclose(one.vectors, two.vectors, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(one.token_ids, two.token_ids)
    assert [(g.identifier, g.doc_ids, g.ce) for g in one.groups] == [
        (g.identifier, g.doc_ids, g.ce) for g in two.groups
    ]
    for mode in ("ce", "token"):
        a, b = Trie.load(one.trie_path(mode)), Trie.load(two.trie_path(mode))
        for field in ("indptr", "edge_ids", "term_nodes", "term_values"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field))


def test_index_and_search_commands(t5_dir, tmp_path, capsys):
    corpus = toy_corpus(8, seed=2)
    path = write_jsonl(corpus, tmp_path / "c.jsonl")
    cfg = tmp_path / "index.yml"
    cfg.write_text("shard_size: 4\nbatch_tokens: 128\nprogress: false\naccelerator: cpu\nmax_length: 64\n")
    main(
        [
            "index",
            str(path),
            "--model",
            str(t5_dir),
            "--out",
            str(tmp_path / "idx"),
            "--config",
            str(cfg),
            "--k",
            "3",
            "--trie-mode",
            "token",
        ]
    )
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert manifest["config"]["k"] == 3 and manifest["config"]["trie_mode"] == "token"
    capsys.readouterr()
    main(["search", str(tmp_path / "idx"), "alpha river", "-k", "3"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == ["1", "2", "3"]
    assert all(line.split("\t")[1] in corpus for line in lines)
    assert all(line.split("\t")[3] == corpus[line.split("\t")[1]]["title"] for line in lines)
    main(["search", str(tmp_path / "idx"), "alpha river", "-k", "3", "--normalizer", "ivf:100000:100000"])
    approx = capsys.readouterr().out.strip().splitlines()  # every list probed, top-k = all rows: exact
    assert [line.split("\t")[1] for line in approx] == [line.split("\t")[1] for line in lines]
    with pytest.raises(SystemExit) as err:
        main(["search", str(tmp_path / "idx"), "alpha", "--normalizer", "ivf:0"])
    assert err.value.code == 2 and "ivf[:NPROBE" in capsys.readouterr().err
    queries = tmp_path / "q.tsv"
    queries.write_text("q1\tgamma star\nq2\tiron gold\n")
    main(
        [
            "search",
            str(tmp_path / "idx"),
            "--queries",
            str(queries),
            "--run",
            str(tmp_path / "run.trec"),
            "-k",
            "5",
            "--retriever",
            "genre",
        ]
    )
    rows = [line.split() for line in (tmp_path / "run.trec").read_text().splitlines()]
    assert {r[0] for r in rows} == {"q1", "q2"} and len(rows) == 10 and all(r[2] in corpus for r in rows)
    extra = write_jsonl({"new": {"title": "Brand New Title", "text": "harbor"}}, tmp_path / "n.jsonl")
    main(["index", str(extra), "--append", str(tmp_path / "idx")])
    assert json.loads((tmp_path / "idx" / "manifest.json").read_text())["counts"]["documents"] == 9
    with pytest.raises(SystemExit) as err:
        main(["index", str(extra), "--append", str(tmp_path / "idx")])
    assert err.value.code == 2 and "--replace" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["index", str(extra), "--append", str(tmp_path / "idx"), "--k", "2"])
    assert "cannot change" in capsys.readouterr().err
