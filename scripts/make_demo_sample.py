"""Rebuild the bundled demo sample npdecode/data/scifact-sample from BEIR SciFact.

Usage: python scripts/make_demo_sample.py DIR/scifact npdecode/data/scifact-sample   (DIR: a BEIR SciFact copy)

Selection (deterministic): every document judged for a test query, then documents judged
for training queries (seeded shuffle) and then unjudged ones (seeded shuffle) until 1,000
documents; the test queries and qrels, and
the training queries whose judged documents are all in the sample (for training demos).
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

from npdecode.corpus import iter_corpus
from npdecode.topics import load_qrels, load_queries

SIZE = 1000


def main(src: Path, dst: Path) -> None:
    test = load_qrels(src / "qrels" / "test.tsv").judgments
    train = load_qrels(src / "qrels" / "train.tsv").judgments
    chosen = {d for docs in test.values() for d in docs}
    train_docs = sorted({d for docs in train.values() for d in docs} - chosen)
    random.Random(0).shuffle(train_docs)
    chosen.update(train_docs[: SIZE - len(chosen)])
    others = sorted(i for i, _ in iter_corpus(src / "corpus.jsonl") if i not in chosen)
    random.Random(1).shuffle(others)
    chosen.update(others[: max(0, SIZE - len(chosen))])
    corpus = [(i, doc) for i, doc in iter_corpus(src / "corpus.jsonl") if i in chosen]
    train = {q: docs for q, docs in train.items() if set(docs) <= chosen}
    queries = load_queries(src / "queries.jsonl")
    (dst / "qrels").mkdir(parents=True, exist_ok=True)
    with open(dst / "corpus.jsonl", "w", encoding="utf-8") as fh:
        fh.writelines(
            json.dumps({"_id": doc_id, "title": doc["title"], "text": doc["text"]}, ensure_ascii=False) + "\n"
            for doc_id, doc in corpus
        )
    with open(dst / "queries.jsonl", "w", encoding="utf-8") as fh:
        fh.writelines(
            json.dumps({"_id": qid, "text": queries[qid]}, ensure_ascii=False) + "\n"
            for qid in sorted({*test, *train}, key=int)
        )
    for name, qrels in (("test", test), ("train", train)):
        with open(dst / "qrels" / f"{name}.tsv", "w", encoding="utf-8") as fh:
            fh.write("query-id\tcorpus-id\tscore\n")
            for qid in sorted(qrels, key=int):
                fh.writelines(f"{qid}\t{doc_id}\t{qrels[qid][doc_id]}\n" for doc_id in sorted(qrels[qid]))
    print(f"{len(corpus)} documents, {len(test)} test queries, {len(train)} train queries")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
