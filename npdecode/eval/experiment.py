"""One evaluation: a dataset split, one or more retrievers, their runs, metrics and tests.

The first retriever is the reference: every other one gets a paired two-sided t-test per
metric against it over the judged queries.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from npdecode.eval.datasets import Dataset
from npdecode.eval.metrics import Evaluation, evaluate, paired_pvalue
from npdecode.runs import Run
from npdecode.search.options import SearchOptions
from npdecode.search.registry import build_retriever


@dataclass
class RetrieverResult:
    name: str
    run: Run
    evaluation: Evaluation
    seconds: float
    pvalues: dict[str, float] = field(default_factory=dict)  # vs the first retriever


@dataclass
class Experiment:
    dataset: Dataset
    k: int
    results: list[RetrieverResult]


def run_experiment(
    dataset: Dataset,
    retrievers: Sequence[str],
    options: SearchOptions | Mapping[str, Any],
    k: int = 1000,
    ignore_identical_ids: bool | None = None,
    progress=None,
) -> Experiment:
    """Build each retriever, search the split's queries, evaluate; ``progress(msg)`` logs steps."""
    log = progress or (lambda msg: None)
    options = SearchOptions.of(options)
    ignore = dataset.ignore_identical_ids if ignore_identical_ids is None else ignore_identical_ids
    results: list[RetrieverResult] = []
    for name in retrievers:
        log(f"{name}: building the retriever")
        start = time.perf_counter()
        retriever = build_retriever(name, dataset.corpus_path, options)
        log(f"{name}: searching {len(dataset.queries)} queries")
        run = retriever.search(dataset.queries, k)
        note = retriever.past_beam_note(k) if hasattr(retriever, "past_beam_note") else None
        if note:  # generative retrievers: how the documents past the beam were ranked
            log(f"{name}: {note}")
        seconds = time.perf_counter() - start
        evaluation = evaluate(dataset.qrels.judgments, run, queries=dataset.queries, ignore_identical_ids=ignore)
        results.append(RetrieverResult(name, run, evaluation, seconds))
    reference = results[0].evaluation
    for result in results[1:]:
        result.pvalues = {m: paired_pvalue(reference, result.evaluation, m) for m in reference.mean}
    return Experiment(dataset=dataset, k=k, results=results)
