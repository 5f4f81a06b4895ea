"""Fixtures of the evaluation harness: a tiny BEIR folder, a tiny random BERT encoder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

DOCS = {
    "d1": ("Cats", "cats purr and sleep on warm windows"),
    "d2": ("", "dogs bark at the mail carrier every morning"),
    "d3": ("Birds", "birds sing at dawn and migrate south"),
    "d4": ("", "fish swim in cold rivers and warm lakes"),
    "d5": ("Cats and dogs", "cats and dogs can live together peacefully"),
}
QUERIES = {"q1": "why do cats purr", "q2": "dogs bark", "q3": "bird migration", "q4": "unjudged query about fish"}
# graded qrels, a negative grade, a judged query unknown to queries.jsonl
QRELS = [("q1", "d1", 2), ("q1", "d5", 1), ("q2", "d2", 1), ("q2", "d4", -1), ("q3", "d3", 1), ("q9", "d1", 1)]


def write_beir(folder: Path) -> Path:
    (folder / "qrels").mkdir(parents=True)
    with open(folder / "corpus.jsonl", "w") as fh:
        fh.writelines(
            json.dumps({"_id": i, "title": title, "text": text, "metadata": {}}) + "\n"
            for i, (title, text) in DOCS.items()
        )
    with open(folder / "queries.jsonl", "w") as fh:
        fh.writelines(json.dumps({"_id": i, "text": text, "metadata": {}}) + "\n" for i, text in QUERIES.items())
    with open(folder / "qrels" / "test.tsv", "w") as fh:
        fh.write("query-id\tcorpus-id\tscore\n")
        fh.writelines(f"{q}\t{d}\t{r}\n" for q, d, r in QRELS)
    return folder


@pytest.fixture
def beir_dir(tmp_path) -> Path:
    return write_beir(tmp_path / "toy")


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A random 2-layer BERT with a word-level vocabulary covering the toy corpus."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = tmp_path_factory.mktemp("tiny_bert")
    words = sorted(
        {w for t, x in DOCS.values() for w in f"{t} {x}".lower().split()}
        | {w for q in QUERIES.values() for w in q.split()}
    )
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=True)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)  # fmt: skip
    BertModel(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
