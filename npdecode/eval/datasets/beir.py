"""BEIR datasets: ``beir/<name>`` (download or ``--data-dir``) and local BEIR-layout folders.

BEIR layout: ``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``. Downloads use the
official zips and fall back to the Hugging Face copies (``BeIR/<name>``, ``BeIR/<name>-qrels``),
cached under ``<cache>/beir/<name>``.
"""

from __future__ import annotations

import json
from pathlib import Path

from npdecode.atomic import atomic_dir
from npdecode.errors import NpdecodeError
from npdecode.eval.datasets.base import Dataset
from npdecode.eval.datasets.download import DownloadError, fetch_zip
from npdecode.topics import load_qrels, load_queries

BEIR_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/{name}.zip"
# Public BEIR datasets (downloadable) and the ones BEIR cannot redistribute (local copy only).
PUBLIC = (
    "msmarco", "trec-covid", "nfcorpus", "nq", "hotpotqa", "fiqa", "arguana", "webis-touche2020",
    "cqadupstack", "quora", "dbpedia-entity", "scidocs", "fever", "climate-fever", "scifact",
)  # fmt: skip
PRIVATE = ("bioasq", "signal1m", "trec-news", "robust04")
CQADUPSTACK = (
    "android", "english", "gaming", "gis", "mathematica", "physics", "programmers", "stats", "tex",
    "unix", "webmasters", "wordpress",
)  # fmt: skip


def load_beir(name: str, split: str, data_dir: Path | None, cache: Path) -> Dataset:
    """``name`` is ``scifact`` or ``cqadupstack/android``; local copy first, else download."""
    top, _, sub = name.partition("/")
    if top not in PUBLIC + PRIVATE:
        raise NpdecodeError(f"unknown BEIR dataset {name!r}; known: {', '.join(PUBLIC + PRIVATE)}")
    if top == "cqadupstack" and sub not in CQADUPSTACK:
        raise NpdecodeError(f"beir/cqadupstack needs a forum: beir/cqadupstack/<{'|'.join(CQADUPSTACK)}>")
    if data_dir is not None:
        folder = Path(data_dir) / name
        if not (folder / "corpus.jsonl").is_file():
            raise NpdecodeError(f"{folder}: no corpus.jsonl; {_layout_hint(name, split, data_dir)}")
    else:
        folder = _download(top, cache / "beir") / sub if sub else _download(top, cache / "beir")
    return load_beir_folder(folder, split, name=f"beir/{name}")


def _layout_hint(name: str, split: str, data_dir: Path | str) -> str:
    return (
        f"provide the BEIR layout {data_dir}/{name}/corpus.jsonl, queries.jsonl and qrels/{split}.tsv "
        "(--data-dir points at the folder that contains it)"
    )


def _download(name: str, root: Path) -> Path:
    target = root / name
    if (target / "corpus.jsonl").is_file() or target.is_dir() and name == "cqadupstack":
        return target
    if name in PRIVATE:
        raise NpdecodeError(
            f"beir/{name} is not redistributed by BEIR; build it locally and "
            f"{_layout_hint(name, 'test', '--data-dir DIR')}"
        )
    errors = []
    try:
        return fetch_zip(BEIR_URL.format(name=name), target)
    except (DownloadError, OSError) as err:
        errors.append(str(err))
    try:
        return _from_hub(name, target)
    except Exception as err:  # noqa: BLE001 - datasets raises many types when offline
        errors.append(f"Hugging Face BeIR/{name}: {str(err).splitlines()[0] if str(err) else type(err).__name__}")
    raise NpdecodeError(
        f"beir/{name}: could not download ({'; '.join(errors)}). Offline? "
        + _layout_hint(name, "test", "DIR").replace("(--data-dir", "and pass --data-dir DIR (it")
    )


def _from_hub(name: str, target: Path) -> Path:
    """Write the Hugging Face copy of a BEIR dataset into the BEIR layout at ``target``."""
    import datasets

    corpus = datasets.load_dataset(f"BeIR/{name}", "corpus", split="corpus")
    queries = datasets.load_dataset(f"BeIR/{name}", "queries", split="queries")
    qrels = datasets.load_dataset(f"BeIR/{name}-qrels")
    with atomic_dir(target, overwrite=True) as tmp:
        with open(tmp / "corpus.jsonl", "w", encoding="utf-8") as fh:
            fh.writelines(
                json.dumps({"_id": str(row["_id"]), "title": row.get("title") or "", "text": row["text"]}) + "\n"
                for row in corpus
            )
        with open(tmp / "queries.jsonl", "w", encoding="utf-8") as fh:
            fh.writelines(json.dumps({"_id": str(row["_id"]), "text": row["text"]}) + "\n" for row in queries)
        (tmp / "qrels").mkdir()
        for split, rows in qrels.items():
            with open(tmp / "qrels" / f"{split}.tsv", "w", encoding="utf-8") as fh:
                fh.write("query-id\tcorpus-id\tscore\n")
                fh.writelines(f"{row['query-id']}\t{row['corpus-id']}\t{row['score']}\n" for row in rows)
    return target


def load_beir_folder(folder: Path, split: str, name: str | None = None) -> Dataset:
    """A BEIR-layout folder: the split's judged queries, its qrels and the corpus path."""
    folder = Path(folder)
    qrels_path = folder / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        available = sorted(p.stem for p in (folder / "qrels").glob("*.tsv"))
        raise NpdecodeError(
            f"{qrels_path}: no qrels for split {split!r}"
            + (f"; available splits: {', '.join(available)}" if available else "; expected qrels/<split>.tsv")
        )
    for needed in ("corpus.jsonl", "queries.jsonl"):
        if not (folder / needed).is_file():
            raise NpdecodeError(f"{folder / needed}: missing; a BEIR folder holds corpus.jsonl, queries.jsonl, qrels/")
    all_queries = load_queries(folder / "queries.jsonl")
    qrels = load_qrels(qrels_path)
    unknown = sorted(q for q in qrels.judgments if q not in all_queries)
    notes = []
    if unknown:
        notes.append(
            f"{qrels_path}: {len(unknown)} judged queries are not in queries.jsonl and were skipped "
            f"(e.g. {unknown[0]!r})"
        )
        for q in unknown:
            del qrels.judgments[q]
    if qrels.negatives:
        notes.append(f"{qrels_path}: {qrels.negatives} negative grades read as non-relevant (0)")
    queries = {q: all_queries[q] for q in qrels.judgments}
    return Dataset(
        name=name or str(folder),
        split=split,
        corpus_path=folder / "corpus.jsonl",
        queries=queries,
        qrels=qrels,
        ignore_identical_ids=True,  # BEIR's evaluation default
        notes=notes,
    )
