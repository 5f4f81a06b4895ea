"""NQ320k, the DSI/NCI split of Natural Questions (``nq320k``): Hits@1/10/100, MRR@100.

Schema (the Hugging Face copy ``dqmis/NQ320K-NCI``, a port of NCI's preprocessing):
``corpus.jsonl`` rows ``{"docid": int, "document": str}``; ``train.jsonl`` / ``valid.jsonl``
rows ``{"query", "docid", "nq_id", "url", "title", "long_answer", "short_answer"}``.
Local copies in that schema go in ``DIR/nq320k/`` (``--data-dir DIR``). Query id = ``nq_id``;
relevant document = ``docid``. Document titles come from the query rows that name them.
"""

from __future__ import annotations

import json
from pathlib import Path

from npdecode.atomic import atomic_file
from npdecode.corpus import read_jsonl
from npdecode.errors import NpdecodeError
from npdecode.eval.datasets.base import Dataset
from npdecode.topics import Qrels

HF_ID = "dqmis/NQ320K-NCI"
SPLIT_FILES = {"train": "train.jsonl", "dev": "valid.jsonl", "test": "valid.jsonl"}


def load_nq320k(split: str, data_dir: Path | None, cache: Path) -> Dataset:
    if split not in SPLIT_FILES:
        raise NpdecodeError(f"nq320k: unknown split {split!r}; use train, dev or test (= dev, as DSI/NCI)")
    folder = Path(data_dir) / "nq320k" if data_dir is not None else cache / "nq320k"
    if not (folder / SPLIT_FILES[split]).is_file() or not (folder / "corpus.jsonl").is_file():
        if data_dir is not None:
            raise NpdecodeError(
                f"{folder}: needs corpus.jsonl ({{docid, document}}) and {SPLIT_FILES[split]} "
                "({query, docid, nq_id, title, ...}) in the NQ320K-NCI schema"
            )
        _from_hub(folder)
    queries, qrels, titles = read_pairs(folder / SPLIT_FILES[split])
    for other in {"train.jsonl", "valid.jsonl"} - {SPLIT_FILES[split]}:
        if (folder / other).is_file():
            titles.update(read_pairs(folder / other)[2])
    corpus = beir_corpus(folder, titles)
    notes = ["nq320k has no separate test split: test = the validation queries (as DSI/NCI)"] if split == "test" else []
    return Dataset(
        name="nq320k", split=split, corpus_path=corpus, queries=queries, qrels=Qrels(qrels, source=str(folder)),
        primary=("success_1", "success_10", "success_100", "recip_rank_cut_100"), notes=notes,
    )  # fmt: skip


def read_pairs(path: Path) -> tuple[dict[str, str], dict[str, dict[str, int]], dict[str, str]]:
    """Query rows -> queries, qrels and ``{docid: title}``."""
    queries, qrels, titles = {}, {}, {}
    for lineno, row in read_jsonl(path):
        if "query" not in row or "docid" not in row:
            raise NpdecodeError(f"{path}:{lineno}: a row needs 'query' and 'docid'")
        qid = str(row.get("nq_id") or f"{path.stem}-{lineno}")
        docid = str(row["docid"])
        queries[qid] = row["query"]
        qrels.setdefault(qid, {})[docid] = 1
        if row.get("title"):
            titles.setdefault(docid, row["title"])
    return queries, qrels, titles


def beir_corpus(folder: Path, titles: dict[str, str]) -> Path:
    """``corpus.jsonl`` ({docid, document}) -> ``corpus.beir.jsonl`` (_id, title, text), once."""
    target = folder / "corpus.beir.jsonl"
    if target.is_file():
        return target
    source = folder / "corpus.jsonl"
    with atomic_file(target) as fh:
        for lineno, row in read_jsonl(source):
            if "docid" not in row or not isinstance(row.get("document"), str):
                raise NpdecodeError(f"{source}:{lineno}: a corpus row needs 'docid' and 'document'")
            docid = str(row["docid"])
            fh.write(json.dumps({"_id": docid, "title": titles.get(docid, ""), "text": row["document"]}) + "\n")
    return target


def _from_hub(folder: Path) -> None:
    try:
        import datasets

        corpus = datasets.load_dataset(HF_ID, "corpus", split="corpus")
        pairs = datasets.load_dataset(HF_ID, "pairs")
    except Exception as err:  # noqa: BLE001 - datasets/hub raise many types when offline
        raise NpdecodeError(
            f"nq320k: could not load {HF_ID} from the Hugging Face hub ({type(err).__name__}). Offline? "
            "put corpus.jsonl, train.jsonl and valid.jsonl of that schema in DIR/nq320k and pass --data-dir DIR"
        ) from None
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in (("corpus.jsonl", corpus), ("train.jsonl", pairs["train"]), ("valid.jsonl", pairs["validation"])):
        with atomic_file(folder / name) as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
