import math
from pathlib import Path

import pytest

from npdecode.errors import NpdecodeError
from npdecode.runs import ranked, read_run, truncate_run, write_metrics, write_run
from npdecode.topics import load_qrels, load_queries

GOLDEN = Path(__file__).parent / "golden"


def test_queries_jsonl_and_tsv(tmp_path):
    (tmp_path / "q.jsonl").write_text('{"_id": 1, "text": "one"}\n{"_id": "2", "text": "two"}\n')
    (tmp_path / "q.tsv").write_text("1\tone\n2\ttwo\n")
    assert load_queries(tmp_path / "q.jsonl") == {"1": "one", "2": "two"}
    assert load_queries(tmp_path / "q.tsv") == {"1": "one", "2": "two"}
    (tmp_path / "bad.jsonl").write_text('{"_id": "1", "text": "a"}\n{"_id": "1", "text": "b"}\n')
    with pytest.raises(NpdecodeError, match="bad.jsonl:2: duplicate query id"):
        load_queries(tmp_path / "bad.jsonl")
    (tmp_path / "empty.jsonl").write_text('{"_id": "1", "text": " "}\n')
    with pytest.raises(NpdecodeError, match="empty.jsonl:1: query '1' has no text"):
        load_queries(tmp_path / "empty.jsonl")


def test_qrels_beir_and_trec_graded_and_negative(tmp_path):
    (tmp_path / "b.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t2\nq1\td2\t-1\nq2\td3\t1\n")
    (tmp_path / "t.txt").write_text("q1 0 d1 2\nq1 0 d2 -1\nq2 0 d3 1\n")
    for name in ("b.tsv", "t.txt"):
        qrels = load_qrels(tmp_path / name)
        assert qrels.judgments == {"q1": {"d1": 2, "d2": 0}, "q2": {"d3": 1}}
        assert qrels.negatives == 1
    (tmp_path / "bad.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\thigh\n")
    with pytest.raises(NpdecodeError, match="bad.tsv:2: relevance 'high' is not a number"):
        load_qrels(tmp_path / "bad.tsv")


def test_run_writer_golden_tiebreak_and_roundtrip(tmp_path):
    run = {"q2": {"b": 1.0, "a": 1.0, "c": 2.5}, "q1": {"z": 0.5, "y": 0.5, "x": 0.75}}
    write_run(run, tmp_path / "run.trec", tag="t")
    assert (tmp_path / "run.trec").read_text() == (GOLDEN / "run.trec").read_text()
    assert read_run(tmp_path / "run.trec") == run
    assert ranked(run["q2"]) == [("c", 2.5), ("a", 1.0), ("b", 1.0)]
    assert truncate_run(run, 1) == {"q2": {"c": 2.5}, "q1": {"x": 0.75}}
    assert set(run["q2"]) == {"a", "b", "c"}  # inputs untouched


def test_run_reader_errors(tmp_path):
    (tmp_path / "r.trec").write_text("q1 Q0 d1 1 0.5 t\nq1 Q0 d2 2 nan t\n")
    with pytest.raises(NpdecodeError, match="r.trec:2: score is nan"):
        read_run(tmp_path / "r.trec")
    (tmp_path / "r2.trec").write_text("q1 Q0 d1 1 0.5\n")
    with pytest.raises(NpdecodeError, match="r2.trec:1: expected 6 columns"):
        read_run(tmp_path / "r2.trec")
    with pytest.raises(NpdecodeError, match="non-finite"):
        write_run({"q": {"d": math.inf}}, tmp_path / "r3.trec")
    assert not (tmp_path / "r3.trec").exists()  # no half-written output


def test_metrics_json_is_written_atomically(tmp_path):
    write_metrics({"ndcg_cut_10": 0.5}, tmp_path / "m.json")
    assert (tmp_path / "m.json").read_text() == '{\n  "ndcg_cut_10": 0.5\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]
