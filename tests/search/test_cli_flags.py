"""One meaning per flag: -k/--top-k is documents per query (search, eval), --centroids is CE rows
per token (index); the old spellings still work for one release, with a warning."""

from __future__ import annotations

import json

from npdecode.cli import main
from tests.index.helpers import toy_corpus_file


def _one_query_dataset(data, corpus):
    """A BEIR-layout folder: ``corpus``, one query ("alpha river") judged against its first document."""
    (data / "qrels").mkdir(parents=True)
    (data / "corpus.jsonl").write_text(corpus.read_text())
    first = json.loads(corpus.read_text().splitlines()[0])["_id"]
    (data / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "alpha river"}) + "\n")
    (data / "qrels" / "test.tsv").write_text(f"query-id\tcorpus-id\tscore\nq1\t{first}\t1\n")
    return data


def test_top_k_centroids_and_the_deprecated_k(t5_dir, tmp_path, capsys):
    corpus = toy_corpus_file(tmp_path, 8, seed=1)
    main(["index", str(corpus), "--model", str(t5_dir), "--out", str(tmp_path / "a"), "--centroids", "2"])
    assert json.loads((tmp_path / "a" / "manifest.json").read_text())["config"]["k"] == 2
    capsys.readouterr()
    main(["index", str(corpus), "--model", str(t5_dir), "--out", str(tmp_path / "b"), "--k", "3"])
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["config"]["k"] == 3
    assert "--k is deprecated" in capsys.readouterr().err
    for flags in (["-k", "2"], ["--top-k", "2"]):
        main(["search", str(tmp_path / "a"), "alpha river", *flags, "--beam", "4", "--device", "cpu"])
        captured = capsys.readouterr()
        assert len(captured.out.strip().splitlines()) == 2 and "deprecated" not in captured.err
    main(["search", str(tmp_path / "a"), "alpha river", "--k", "3"])
    captured = capsys.readouterr()
    assert len(captured.out.strip().splitlines()) == 3 and "use -k/--top-k" in captured.err


def test_dtype_reaches_the_decoder_from_the_cli(t5_dir, tmp_path, capsys, monkeypatch):
    from npdecode import decoding

    seen = []
    real = decoding.cast_for_decoding
    monkeypatch.setattr(decoding, "cast_for_decoding", lambda model, dtype: seen.append(dtype) or real(model, dtype))
    corpus = toy_corpus_file(tmp_path, 6, seed=2)
    main(["index", str(corpus), "--model", str(t5_dir), "--out", str(tmp_path / "a")])
    capsys.readouterr()
    main(["search", str(tmp_path / "a"), "alpha river", "-k", "2", "--dtype", "bf16", "--device", "cpu"])
    assert seen == ["bf16"] and len(capsys.readouterr().out.strip().splitlines()) == 2


def test_model_flags_name_one_thing_each(t5_dir, tmp_path, capsys):
    """--gr-model (search, eval) is the checkpoint to decode with; search's old --model still works."""
    corpus = toy_corpus_file(tmp_path, 6, seed=4)
    main(["index", str(corpus), "--model", str(t5_dir), "--out", str(tmp_path / "a")])
    capsys.readouterr()
    main(["search", str(tmp_path / "a"), "alpha river", "-k", "2", "--gr-model", str(t5_dir)])
    assert len(capsys.readouterr().out.strip().splitlines()) == 2
    main(["search", str(tmp_path / "a"), "alpha river", "-k", "2", "--model", str(t5_dir)])
    captured = capsys.readouterr()
    assert len(captured.out.strip().splitlines()) == 2 and "use --gr-model" in captured.err


def test_memory_weight_reaches_the_retriever_from_search_and_eval(t5_dir, tmp_path, capsys, monkeypatch):
    from npdecode.search.retrievers import generative

    seen = []
    real = generative._build_memory
    monkeypatch.setattr(generative, "_build_memory", lambda *a: seen.append(a[-1]) or real(*a))
    corpus = toy_corpus_file(tmp_path, 6, seed=3)
    main(["index", str(corpus), "--model", str(t5_dir), "--out", str(tmp_path / "a")])
    capsys.readouterr()
    main(["search", str(tmp_path / "a"), "alpha river", "-k", "2", "--memory-weight", "4", "--device", "cpu"])
    assert seen == [4.0] and len(capsys.readouterr().out.strip().splitlines()) == 2
    data = _one_query_dataset(tmp_path / "ds", corpus)
    main(["eval", "--dataset", str(data), "-r", "np", "--index", str(tmp_path / "a"), "-k", "3",
          "--memory-weight", "2.5", "--device", "cpu"])  # fmt: skip
    assert seen == [4.0, 2.5]


def test_past_beam_reaches_the_decoder_and_says_how_it_ranked(t5_dir, tmp_path, capsys, monkeypatch):
    """-k above the beam: --past-beam picks the rule (prefix by default), one stderr line names it,
    and eval's log says it too; -k within the beam says nothing."""
    from npdecode import decoding

    seen = []
    real = decoding.search
    monkeypatch.setattr(decoding, "search", lambda *a, **kw: seen.append(kw["past_beam"]) or real(*a, **kw))
    corpus = toy_corpus_file(tmp_path, 12, seed=5)
    main(["index", str(corpus), "--model", str(t5_dir), "--out", str(tmp_path / "a")])
    capsys.readouterr()
    main(["search", str(tmp_path / "a"), "alpha river", "-k", "8", "--beam", "2", "--device", "cpu"])
    captured = capsys.readouterr()
    assert len(captured.out.strip().splitlines()) == 8
    assert "longest identifier prefix" in captured.err and "past_beam=prefix" in captured.err
    for rule in ("widen", "none"):
        main(["search", str(tmp_path / "a"), "alpha river", "-k", "8", "--beam", "2", "--past-beam", rule])
        assert f"past_beam={rule}" in capsys.readouterr().err
    main(["search", str(tmp_path / "a"), "alpha river", "-k", "2", "--beam", "2"])
    assert "past_beam" not in capsys.readouterr().err
    assert seen == ["prefix", "widen", "none", "prefix"]
    data = _one_query_dataset(tmp_path / "ds", corpus)
    main(["eval", "--dataset", str(data), "-r", "np", "--index", str(tmp_path / "a"), "-k", "10",
          "--beam", "2", "--past-beam", "widen", "--device", "cpu"])  # fmt: skip
    assert seen[-1] == "widen" and "past_beam=widen" in capsys.readouterr().err
