import json
import shutil
import zipfile

import pytest

from npdecode.corpus import load_corpus
from npdecode.errors import NpdecodeError
from npdecode.eval.datasets import beir, load_dataset
from tests.eval.conftest import write_beir


def test_local_beir_folder_graded_unknown_and_negative(beir_dir):
    ds = load_dataset(str(beir_dir), split="test")
    assert set(ds.queries) == {"q1", "q2", "q3"}  # q4 has no judgments, q9 is not a query
    assert ds.qrels.judgments["q1"] == {"d1": 2, "d5": 1}
    assert ds.qrels.judgments["q2"] == {"d2": 1, "d4": 0}
    assert any("1 judged queries are not in queries.jsonl" in n for n in ds.notes)
    assert any("1 negative grades" in n for n in ds.notes)
    assert load_corpus(ds.corpus_path)["d2"]["title"] == ""


def test_missing_split_lists_available(beir_dir):
    with pytest.raises(NpdecodeError, match="no qrels for split 'dev'; available splits: test"):
        load_dataset(str(beir_dir), split="dev")


def test_beir_name_with_data_dir(tmp_path):
    write_beir(tmp_path / "data" / "scifact")
    ds = load_dataset("beir/scifact", data_dir=tmp_path / "data", cache=tmp_path / "cache")
    assert ds.name == "beir/scifact" and ds.ignore_identical_ids
    with pytest.raises(NpdecodeError, match=r"data/nfcorpus/corpus.jsonl, queries.jsonl and qrels/test.tsv"):
        load_dataset("beir/nfcorpus", data_dir=tmp_path / "data", cache=tmp_path / "cache")


def test_beir_download_unzips_official_layout(tmp_path, monkeypatch):
    # The official zip holds one folder named like the dataset; served here from a file:// URL.
    src = write_beir(tmp_path / "zipsrc" / "scifact")
    archive = tmp_path / "served" / "scifact.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as zf:
        for file in src.rglob("*"):
            zf.write(file, file.relative_to(src.parent))
    monkeypatch.setattr(beir, "BEIR_URL", f"file://{archive.parent}/{{name}}.zip")
    ds = load_dataset("beir/scifact", cache=tmp_path / "cache")
    assert (tmp_path / "cache" / "beir" / "scifact" / "corpus.jsonl").is_file()
    assert set(ds.queries) == {"q1", "q2", "q3"}
    shutil.rmtree(tmp_path / "served")  # second call: from the cache, no download
    assert load_dataset("beir/scifact", cache=tmp_path / "cache").queries == ds.queries


def test_offline_without_local_copy_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(beir, "BEIR_URL", f"file://{tmp_path}/absent/{{name}}.zip")
    monkeypatch.setattr(beir, "_from_hub", lambda name, target: (_ for _ in ()).throw(ConnectionError("offline")))
    with pytest.raises(NpdecodeError, match=r"beir/fiqa: could not download .*--data-dir DIR"):
        load_dataset("beir/fiqa", cache=tmp_path / "cache")
    assert not (tmp_path / "cache" / "beir" / "fiqa").exists()


def test_unknown_names(tmp_path):
    with pytest.raises(NpdecodeError, match="unknown BEIR dataset 'nope'"):
        load_dataset("beir/nope", cache=tmp_path)
    with pytest.raises(NpdecodeError, match="unknown dataset 'msmarco-v9'"):
        load_dataset("msmarco-v9", cache=tmp_path)
    with pytest.raises(NpdecodeError, match="needs a forum"):
        load_dataset("beir/cqadupstack", cache=tmp_path)
    with pytest.raises(NpdecodeError, match="not redistributed"):
        load_dataset("beir/robust04", cache=tmp_path)


def _kilt_fixture(folder):
    """The official KILT files: task rows and knowledge-source pages, exactly their schema."""
    folder.mkdir(parents=True)
    rows = [
        {"id": "-1001", "input": "who wrote hamlet", "output": [
            {"answer": "William Shakespeare", "provenance": [
                {"wikipedia_id": "1001", "title": "Hamlet", "start_paragraph_id": 1, "start_character": 0,
                 "end_paragraph_id": 1, "end_character": 40, "bleu_score": 1.0, "section": "Section::::Abstract"}]},
            {"answer": "Shakespeare", "provenance": [{"wikipedia_id": "1002", "title": "William Shakespeare"}]},
            {"answer": "Shakespeare"}]},
        {"id": "-1002", "input": "capital of france", "output": [
            {"answer": "Paris", "provenance": [{"wikipedia_id": "1003", "title": "Paris"}]}]},
    ]  # fmt: skip
    (folder / "nq-dev-kilt.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pages = [
        {"_id": "1", "wikipedia_id": "1001", "wikipedia_title": "Hamlet",
         "text": ["Hamlet\n", "Hamlet is a tragedy by William Shakespeare.\n", "Section::::Plot.\n"],
         "anchors": [], "categories": "Plays", "history": {"revid": 1}, "wikidata_info": {}},
        {"_id": "2", "wikipedia_id": "1002", "wikipedia_title": "William Shakespeare",
         "text": ["William Shakespeare\n", "An English playwright.\n"]},
        {"_id": "3", "wikipedia_id": "1003", "wikipedia_title": "Paris", "text": ["Paris\n", "Capital of France.\n"]},
    ]  # fmt: skip
    (folder / "kilt_knowledgesource.json").write_text("".join(json.dumps(p) + "\n" for p in pages))


def test_kilt_nq_from_official_files(tmp_path):
    _kilt_fixture(tmp_path / "kilt" / "nq")
    ds = load_dataset("nq", split="test", data_dir=tmp_path / "kilt", cache=tmp_path / "cache")
    assert ds.split == "dev" and "hidden" in ds.notes[0]
    assert ds.queries == {"-1001": "who wrote hamlet", "-1002": "capital of france"}
    assert ds.qrels.judgments == {"-1001": {"1001": 1, "1002": 1}, "-1002": {"1003": 1}}
    assert ds.primary[0] == "Rprec"
    corpus = load_corpus(ds.corpus_path)
    assert corpus["1001"] == {"title": "Hamlet", "text": "Hamlet is a tragedy by William Shakespeare. Section::::Plot."}
    with pytest.raises(NpdecodeError, match="nq-train-kilt.jsonl: missing"):
        load_dataset("nq", split="train", data_dir=tmp_path / "kilt", cache=tmp_path / "cache")


def test_nq320k_from_nci_schema(tmp_path):
    folder = tmp_path / "d" / "nq320k"
    folder.mkdir(parents=True)
    corpus = [
        {"docid": 0, "document": "The Walking Dead (season 8)the eighth season ..."},
        {"docid": 1, "document": "Email marketingis ..."},
    ]
    pairs = {
        "train.jsonl": [
            {
                "query": "what is opt-in email",
                "docid": 1,
                "nq_id": "11",
                "url": "u",
                "title": "Email marketing",
                "long_answer": "",
                "short_answer": "",
            }
        ],
        "valid.jsonl": [
            {
                "query": "when is the last episode of season 8 of the walking dead",
                "docid": 0,
                "nq_id": "5225754983651766092",
                "url": "u",
                "title": "The Walking Dead (season 8)",
                "long_answer": "x",
                "short_answer": "",
            }
        ],
    }
    (folder / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in corpus))
    for name, rows in pairs.items():
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds = load_dataset("nq320k", split="dev", data_dir=tmp_path / "d", cache=tmp_path / "cache")
    assert ds.queries == {"5225754983651766092": "when is the last episode of season 8 of the walking dead"}
    assert ds.qrels.judgments == {"5225754983651766092": {"0": 1}}
    assert load_corpus(ds.corpus_path)["1"]["title"] == "Email marketing"
    assert ds.primary == ("success_1", "success_10", "success_100", "recip_rank_cut_100")


def test_dataset_registry_refuses_taken_names_and_resolves_families(tmp_path, monkeypatch):
    from npdecode.eval import datasets

    assert {"beir/", "nq", "nq320k"} <= set(datasets.dataset_names())
    with pytest.raises(ValueError, match="already registered"):
        datasets.register_dataset("nq", lambda *a: None)
    monkeypatch.setattr(datasets, "_LOADERS", dict(datasets._LOADERS))
    seen = []
    datasets.register_dataset("toyfam/", lambda rest, split, data_dir, cache: seen.append((rest, split)) or "ok")
    assert datasets.load_dataset("toyfam/sub/set", "dev", cache=tmp_path) == "ok" and seen == [("sub/set", "dev")]
    with pytest.raises(NpdecodeError, match="toyfam/<name>"):
        datasets.load_dataset("nothing-like-it", cache=tmp_path)


def test_kilt_nq_through_the_cli_with_bm25_and_np(tmp_path, t5_dir, capsys):
    """The mission's command, `npdecode eval --dataset nq`, on a KILT-shaped fixture (the official
    files and schema): the knowledge source is converted once to an on-disk corpus, indexed with
    `npdecode index`, and bm25 and np are scored with R-precision first."""
    from npdecode.cli import main

    _kilt_fixture(tmp_path / "kilt" / "nq")
    ds = load_dataset("nq", split="dev", data_dir=tmp_path / "kilt", cache=tmp_path / "cache")
    main(["index", str(ds.corpus_path), "--model", str(t5_dir), "--out", str(tmp_path / "idx"), "--centroids", "2"])
    out = tmp_path / "m.json"
    main(["eval", "--dataset", "nq", "--data-dir", str(tmp_path / "kilt"), "-r", "bm25", "-r", "np",
          "--index", str(tmp_path / "idx"), "--json", str(out), "--cache-dir", str(tmp_path / "cache"),
          "--device", "cpu"])  # fmt: skip
    report = json.loads(out.read_text())
    assert report["dataset"] == "nq" and report["num_queries"] == 2 and list(report["retrievers"]) == ["bm25", "np"]
    for name in ("bm25", "np"):
        metrics = report["retrievers"][name]["metrics"]
        assert 0.0 <= metrics["Rprec"] <= 1.0 and set(report["retrievers"][name]["per_query"]) == {"-1001", "-1002"}
    assert report["retrievers"]["bm25"]["metrics"]["success_1"] == 1.0  # both queries name their page's words
    assert "nq (dev, 2 judged queries)" in capsys.readouterr().out
