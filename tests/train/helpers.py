"""Toy BEIR folders and fast training configs for the training tests."""

from __future__ import annotations

import json
from pathlib import Path

from npdecode.train.config import load_train_config
from tests.tiny_models import toy_corpus


def toy_beir(folder: Path, n_docs: int = 20, *, train_queries: bool = True, seed: int = 0) -> Path:
    """A BEIR folder: ``n_docs`` toy documents; each document ``di`` gets a training query
    ``qi`` (its title words in another order plus a word of its text) when ``train_queries``."""
    corpus = toy_corpus(n_docs, seed)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "corpus.jsonl", "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps({"_id": doc_id, **doc}) + "\n" for doc_id, doc in corpus.items())
    if train_queries:
        with open(folder / "queries.jsonl", "w", encoding="utf-8") as fh:
            for i, (doc_id, doc) in enumerate(corpus.items()):
                words = doc["title"].lower().split()
                fh.write(json.dumps({"_id": f"q{i}", "text": " ".join(reversed(words))}) + "\n")
        (folder / "qrels").mkdir(exist_ok=True)
        for split in ("train", "test"):
            lines = ["query-id\tcorpus-id\tscore"] + [f"q{i}\td{i}\t1" for i in range(n_docs)]
            (folder / "qrels" / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return folder


FAST_INDEX = {
    "shard_size": 8,
    "batch_tokens": 256,
    "batch_size": 8,
    "progress": False,
    "accelerator": "cpu",
    "max_length": 64,
}


def fast_config(backbone: str | Path, dataset: str | Path, **sections):
    """A config that trains a tiny model for a few steps on CPU, no progress bar."""
    data = {
        "backbone": str(backbone),
        "data": {
            "dataset": str(dataset),
            "batch_size": 8,
            "max_input_length": 32,
            "pseudo_queries": {"per_document": 1},
        },
        "model": {"variant": "np", "logit_scale": 1.0},
        "optim": {"optimizer": "adamw", "lr": 3e-3, "schedule": "constant"},
        "trainer": {"accelerator": "cpu", "max_steps": 4, "progress": False, "log_every_n_steps": 1},
        "validation": {"queries": 4, "beam": 4},
        "index": FAST_INDEX,
    }
    for key, value in sections.items():
        data.setdefault(key, {})
        if isinstance(value, dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return data


def write_config(path: Path, data: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(data))
    return path


def load(data: dict):
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        return load_train_config(write_config(Path(tmp) / "c.yml", data))
