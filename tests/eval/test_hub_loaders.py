"""The Hugging Face paths of the loaders, with ``datasets.load_dataset`` served from memory
in each hub dataset's own schema (no network)."""

import datasets
import pytest

from npdecode.corpus import load_corpus
from npdecode.eval.datasets import beir, load_dataset


def _serve(monkeypatch, tables):
    calls = []

    def fake_load_dataset(path, name=None, split=None, streaming=False):
        calls.append((path, name, split))
        table = tables[(path, name)]
        if split is None:
            return datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in table.items()})
        return datasets.Dataset.from_list(table[split])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    return calls


def test_beir_hub_copy_written_in_beir_layout(tmp_path, monkeypatch):
    monkeypatch.setattr(beir, "BEIR_URL", f"file://{tmp_path}/absent/{{name}}.zip")  # official zip unreachable
    _serve(monkeypatch, {
        ("BeIR/scifact", "corpus"): {"corpus": [{"_id": "4983", "title": "Microstructural", "text": "Alterations"},
                                                 {"_id": "5836", "title": "", "text": "Induction"}]},
        ("BeIR/scifact", "queries"): {"queries": [{"_id": "1", "title": "", "text": "0-dimensional biomaterials"}]},
        ("BeIR/scifact-qrels", None): {"test": [{"query-id": 1, "corpus-id": 4983, "score": 1}],
                                       "train": [{"query-id": 1, "corpus-id": 5836, "score": 1}]},
    })  # fmt: skip
    ds = load_dataset("beir/scifact", cache=tmp_path / "cache")
    assert ds.queries == {"1": "0-dimensional biomaterials"} and ds.qrels.judgments == {"1": {"4983": 1}}
    assert load_corpus(ds.corpus_path)["5836"] == {"title": "", "text": "Induction"}
    assert load_dataset("beir/scifact", split="train", cache=tmp_path / "cache").qrels.judgments == {"1": {"5836": 1}}


def test_kilt_nq_from_hub_schema(tmp_path, monkeypatch):
    task_row = {
        "id": "q1",
        "input": "who wrote hamlet",
        "meta": {"left_context": ""},
        "output": [
            {
                "answer": "Shakespeare",
                "meta": {"score": 0},
                "provenance": [
                    {
                        "wikipedia_id": "1001",
                        "title": "Hamlet",
                        "section": "Abstract",
                        "start_paragraph_id": 1,
                        "end_paragraph_id": 1,
                        "bleu_score": 1.0,
                    }
                ],
            }
        ],
    }
    page = {
        "kilt_id": "1",
        "wikipedia_id": "1001",
        "wikipedia_title": "Hamlet",
        "text": {"paragraph": ["Hamlet\n", "A tragedy.\n"]},
        "categories": "Plays",
    }
    calls = _serve(monkeypatch, {("facebook/kilt_tasks", "nq"): {"validation": [task_row]},
                                 ("facebook/kilt_wikipedia", None): {"full": [page]}})  # fmt: skip
    ds = load_dataset("nq", split="dev", cache=tmp_path / "cache")
    assert ("facebook/kilt_tasks", "nq", "validation") in calls
    assert ds.qrels.judgments == {"q1": {"1001": 1}}
    assert load_corpus(ds.corpus_path) == {"1001": {"title": "Hamlet", "text": "A tragedy."}}


def test_nq320k_from_hub_schema(tmp_path, monkeypatch):
    pair = {
        "query": "q text",
        "docid": 7,
        "nq_id": "123",
        "url": "u",
        "title": "T",
        "long_answer": "",
        "short_answer": "",
    }
    _serve(monkeypatch, {("dqmis/NQ320K-NCI", "corpus"): {"corpus": [{"docid": 7, "document": "Tdoc"}]},
                         ("dqmis/NQ320K-NCI", "pairs"): {"train": [pair], "validation": [pair]}})  # fmt: skip
    ds = load_dataset("nq320k", split="test", cache=tmp_path / "cache")
    assert ds.qrels.judgments == {"123": {"7": 1}} and "validation" in ds.notes[0]
    assert load_corpus(ds.corpus_path) == {"7": {"title": "T", "text": "Tdoc"}}


def test_hub_failure_is_one_clear_error(tmp_path, monkeypatch):
    from npdecode.errors import NpdecodeError

    def offline(*a, **k):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(NpdecodeError, match=r"nq: could not load KILT NQ .*--data-dir DIR"):
        load_dataset("nq", cache=tmp_path)
    with pytest.raises(NpdecodeError, match=r"nq320k: could not load dqmis/NQ320K-NCI .*--data-dir DIR"):
        load_dataset("nq320k", cache=tmp_path)
