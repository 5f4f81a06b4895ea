"""KILT Natural Questions at page level (``nq``), as in the Np Decoding paper.

Queries: the KILT NQ task (``id``, ``input``, ``output[].provenance[].wikipedia_id``);
relevant documents: the provenance Wikipedia pages (grade 1); corpus: the KILT knowledge
source (one page per line: ``wikipedia_id``, ``wikipedia_title``, ``text`` as a list of
paragraphs, or ``{"paragraph": [...]}`` in the Hugging Face copy); main metric: R-precision.

Local files (``--data-dir DIR``): ``DIR/nq/nq-<split>-kilt.jsonl`` and
``DIR/nq/kilt_knowledgesource.json[l]`` (the official KILT files) or an already converted
``DIR/nq/corpus.jsonl`` in BEIR form. Online, the Hugging Face copies
(``facebook/kilt_tasks`` config ``nq``, ``facebook/kilt_wikipedia``) are written into the
cache in that same layout. KILT's test labels are hidden, so ``--split test`` evaluates the
public dev set, as the paper does (the dataset notes say so).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from npdecode.atomic import atomic_file
from npdecode.corpus import read_jsonl
from npdecode.errors import NpdecodeError
from npdecode.eval.datasets.base import Dataset
from npdecode.topics import Qrels

SPLIT_FILES = {"train": "nq-train-kilt.jsonl", "dev": "nq-dev-kilt.jsonl"}
HF_SPLITS = {"train": "train", "dev": "validation"}
SOURCE_NAMES = ("kilt_knowledgesource.json", "kilt_knowledgesource.jsonl")


def load_kilt_nq(split: str, data_dir: Path | None, cache: Path) -> Dataset:
    notes = []
    if split == "test":
        notes.append("KILT NQ test labels are hidden: evaluating the public dev set (as the paper)")
        split = "dev"
    if split not in SPLIT_FILES:
        raise NpdecodeError(f"nq: unknown split {split!r}; use train, dev or test")
    folder = Path(data_dir) / "nq" if data_dir is not None else cache / "kilt" / "nq"
    task_file = folder / SPLIT_FILES[split]
    if not task_file.is_file():
        if data_dir is not None:
            raise NpdecodeError(f"{task_file}: missing; {_hint(data_dir)}")
        _from_hub(folder, split)
    queries, qrels = read_kilt_task(task_file)
    corpus = kilt_corpus(folder)
    return Dataset(
        name="nq", split=split, corpus_path=corpus, queries=queries, qrels=Qrels(qrels, source=str(task_file)),
        primary=("Rprec", "success_1", "success_5"), notes=notes,
    )  # fmt: skip


def _hint(data_dir) -> str:
    return (
        f"provide {data_dir}/nq/nq-dev-kilt.jsonl (and nq-train-kilt.jsonl) plus "
        f"{data_dir}/nq/kilt_knowledgesource.json, the official KILT files, or corpus.jsonl in BEIR form"
    )


def read_kilt_task(path: Path) -> tuple[dict[str, str], dict[str, dict[str, int]]]:
    """KILT task rows -> queries and page-level qrels (every provenance page of every output)."""
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    for lineno, row in read_jsonl(path):
        qid, text = row.get("id"), row.get("input")
        if qid is None or not isinstance(text, str):
            raise NpdecodeError(f"{path}:{lineno}: a KILT row needs 'id' and 'input'")
        qid = str(qid)
        queries[qid] = text
        for output in row.get("output") or []:
            for prov in output.get("provenance") or []:
                if prov.get("wikipedia_id") is not None:
                    qrels.setdefault(qid, {})[str(prov["wikipedia_id"])] = 1
    if not queries:
        raise NpdecodeError(f"{path}: no queries")
    return queries, qrels


def kilt_corpus(folder: Path) -> Path:
    """The BEIR-form corpus of the knowledge source, converted once (streamed) into ``folder``."""
    corpus = folder / "corpus.jsonl"
    if corpus.is_file():
        return corpus
    source = next((folder / n for n in SOURCE_NAMES if (folder / n).is_file()), None)
    if source is None:
        raise NpdecodeError(f"{folder}: no kilt_knowledgesource.json nor corpus.jsonl; {_hint(folder.parent)}")
    write_pages(((lineno, row) for lineno, row in read_jsonl(source)), corpus, str(source))
    return corpus


def write_pages(rows: Iterable[tuple[int, dict]], corpus: Path, source: str) -> None:
    with atomic_file(corpus) as fh:
        for lineno, row in rows:
            fh.write(json.dumps(_page(row, source, lineno), ensure_ascii=False) + "\n")


def _page(row: dict, source: str, lineno: int) -> dict:
    if row.get("wikipedia_id") is None:
        raise NpdecodeError(f"{source}:{lineno}: a knowledge-source page needs 'wikipedia_id'")
    title = row.get("wikipedia_title") or ""
    paragraphs = row.get("text") or []
    if isinstance(paragraphs, dict):
        paragraphs = paragraphs.get("paragraph") or []
    paragraphs = [p.strip() for p in paragraphs]
    if paragraphs and paragraphs[0] == title.strip():
        paragraphs = paragraphs[1:]  # KILT pages start with the title as paragraph 0
    return {"_id": str(row["wikipedia_id"]), "title": title, "text": " ".join(p for p in paragraphs if p)}


def _from_hub(folder: Path, split: str) -> None:
    try:
        import datasets

        task = datasets.load_dataset("facebook/kilt_tasks", "nq", split=HF_SPLITS[split])
        with atomic_file(folder / SPLIT_FILES[split]) as fh:
            for row in task:
                fh.write(json.dumps({"id": row["id"], "input": row["input"], "output": row["output"]}) + "\n")
        if not (folder / "corpus.jsonl").is_file():
            pages = datasets.load_dataset("facebook/kilt_wikipedia", split="full", streaming=True)
            write_pages(_numbered(pages), folder / "corpus.jsonl", "facebook/kilt_wikipedia")
    except NpdecodeError:
        raise
    except Exception as err:  # noqa: BLE001 - datasets/hub raise many types when offline
        raise NpdecodeError(
            f"nq: could not load KILT NQ from the Hugging Face hub ({type(err).__name__}). "
            f"Offline? {_hint('DIR')} and pass --data-dir DIR"
        ) from None


def _numbered(rows: Iterable[dict]) -> Iterator[tuple[int, dict]]:
    return ((i, row) for i, row in enumerate(rows, start=1))
