import json

import pytest

from npdecode.corpus import corpus_digest, iter_corpus, load_corpus
from npdecode.errors import NpdecodeError


def _jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_reads_every_format_to_the_same_contract(tmp_path):
    docs = {"a": {"title": "T1", "text": "one"}, "b": {"title": "", "text": "two"}}
    j = _jsonl(tmp_path / "c.jsonl", [{"_id": "a", "title": "T1", "text": "one"}, {"_id": "b", "text": "two"}])
    t3 = tmp_path / "c3.tsv"
    t3.write_text("id\ttitle\ttext\na\tT1\tone\nb\t\ttwo\n")
    assert load_corpus(j) == docs
    assert load_corpus(t3) == docs
    t2 = tmp_path / "c2.tsv"
    t2.write_text("a\tone\nb\ttwo\n")
    assert load_corpus(t2) == {"a": {"title": "", "text": "one"}, "b": {"title": "", "text": "two"}}
    folder = tmp_path / "txt"
    folder.mkdir()
    (folder / "a.txt").write_text("one\n")
    (folder / "b.txt").write_text("two")
    assert load_corpus(folder) == {"a": {"title": "", "text": "one"}, "b": {"title": "", "text": "two"}}
    beir = tmp_path / "beir"
    beir.mkdir()
    (beir / "corpus.jsonl").write_text(j.read_text())
    assert load_corpus(beir) == docs


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"_id": "a", "text": "x"}\n{"_id": "b", "text": \n', "c.jsonl:2: malformed JSON"),
        ('{"_id": "a", "text": "x"}\n{"title": "t", "text": "y"}\n', "c.jsonl:2: missing '_id'"),
        ('{"_id": "a", "text": "x"}\n{"_id": "a", "text": "y"}\n', "duplicate document id 'a'"),
        ("\n\n", "the corpus is empty"),
        ('["a", "b"]\n', "c.jsonl:1: expected a JSON object"),
        ('{"_id": "a", "text": ["x"]}\n', "c.jsonl:1: field 'text' must be a string"),
    ],
)
def test_bad_jsonl_names_file_and_line(tmp_path, content, message):
    path = tmp_path / "c.jsonl"
    path.write_text(content)
    with pytest.raises(NpdecodeError, match=message.replace("[", r"\[")):
        load_corpus(path)


def test_non_utf8_names_line_and_byte(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_bytes(b'{"_id": "a", "text": "ok"}\n{"_id": "b", "text": "caf\xe9"}\n')
    with pytest.raises(NpdecodeError, match=r"c.jsonl:2: not valid UTF-8 \(byte 0xe9"):
        load_corpus(path)


def test_tsv_with_wrong_columns(tmp_path):
    path = tmp_path / "c.tsv"
    path.write_text("a\tT\ttext\nb\tx\ty\tz\n")
    with pytest.raises(NpdecodeError, match="c.tsv:2: expected"):
        load_corpus(path)


def test_missing_and_unknown_inputs(tmp_path):
    with pytest.raises(NpdecodeError, match="no such corpus"):
        load_corpus(tmp_path / "nope.jsonl")
    (tmp_path / "c.csv").write_text("a,b\n")
    with pytest.raises(NpdecodeError, match="unknown corpus format"):
        load_corpus(tmp_path / "c.csv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NpdecodeError, match="neither corpus.jsonl"):
        load_corpus(tmp_path / "empty")


def test_streaming_yields_before_reading_the_rest(tmp_path):
    # The bad line at the end is only reached when iteration gets there: nothing is preloaded.
    path = _jsonl(tmp_path / "c.jsonl", [{"_id": "a", "text": "x"}, "{broken"])
    rows = iter_corpus(path)
    assert next(rows) == ("a", {"title": "", "text": "x"})
    with pytest.raises(NpdecodeError, match=":2: malformed JSON"):
        next(rows)


def test_digest_changes_with_content(tmp_path):
    a = _jsonl(tmp_path / "a.jsonl", [{"_id": "a", "text": "x"}])
    before = corpus_digest(a)
    _jsonl(a, [{"_id": "a", "text": "y"}])
    assert corpus_digest(a) != before
