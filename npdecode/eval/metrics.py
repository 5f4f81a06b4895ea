"""Retrieval metrics through pytrec_eval (trec_eval semantics), keyed as pytrec_eval names them.

Measures (``DEFAULT_MEASURES``): nDCG@{1,3,5,10,100} ``ndcg_cut_k``, Recall@{1,5,10,100,1000}
``recall_k``, Hits@k ``success_k``, MAP@100 ``map_cut_100``, R-precision ``Rprec``, MRR over the
whole run ``recip_rank`` and MRR@{10,100} ``recip_rank_cut_k`` (trec_eval has no MRR cutoff:
we evaluate ``recip_rank`` on the run cut to its top k by ``(-score, doc_id)``).

Averages are over judged queries only (as trec_eval and BEIR do): a query without judgments
is excluded; a judged query that the run does not answer counts as 0 (trec_eval ``-c``).
Inputs are never mutated.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import pytrec_eval

from npdecode.errors import NpdecodeError
from npdecode.runs import truncate_run

DEFAULT_MEASURES = (
    "ndcg_cut.1,3,5,10,100",
    "recall.1,5,10,100,1000",
    "success.1,5,10,100",
    "map_cut.100",
    "Rprec",
    "recip_rank",
)
MRR_CUTOFFS = (10, 100)


@dataclass
class Evaluation:
    """Per-query values and their means over the judged queries."""

    per_query: dict[str, dict[str, float]]
    mean: dict[str, float]
    num_queries: int
    removed_identical: int = 0
    notes: list[str] = field(default_factory=list)


def evaluate(
    qrels: Mapping[str, Mapping[str, int]],
    run: Mapping[str, Mapping[str, float]],
    *,
    queries: Iterable[str] | None = None,
    measures: Iterable[str] = DEFAULT_MEASURES,
    mrr_cutoffs: Iterable[int] = MRR_CUTOFFS,
    ignore_identical_ids: bool = False,
) -> Evaluation:
    """Evaluate ``run`` against ``qrels``.

    ``queries``: the query ids asked (default: those in the run); the judged ones among them
    are evaluated. ``ignore_identical_ids`` drops a document whose id equals the query id
    (BEIR's default, for ArguAna/Quora-style corpora that contain the queries).
    """
    asked = set(run) if queries is None else set(queries)
    judged = sorted(q for q in asked if qrels.get(q))
    if not judged:
        raise NpdecodeError("no judged query to evaluate: the qrels name none of the queries in the run")
    qrels_copy = {q: {d: int(r) for d, r in qrels[q].items()} for q in judged}
    run_copy, removed = _judged_run(run, judged, ignore_identical_ids)
    per_query = _pytrec(qrels_copy, run_copy, set(measures))
    for k in mrr_cutoffs:
        cut = _pytrec(qrels_copy, truncate_run(run_copy, k), {"recip_rank"})
        for q in judged:
            per_query[q][f"recip_rank_cut_{k}"] = cut[q]["recip_rank"]
    names = list(next(iter(per_query.values())))
    mean = {m: math.fsum(per_query[q][m] for q in judged) / len(judged) for m in names}
    return Evaluation(per_query=per_query, mean=mean, num_queries=len(judged), removed_identical=removed)


def _judged_run(run: Mapping[str, Mapping[str, float]], judged: list[str], ignore_identical: bool):
    out: dict[str, dict[str, float]] = {}
    removed = 0
    for q in judged:
        docs = dict(run.get(q, {}))
        for d, s in docs.items():
            if not math.isfinite(s):
                raise NpdecodeError(f"run for query {q!r} has a non-finite score ({s}) for document {d!r}")
        if ignore_identical and q in docs:
            del docs[q]
            removed += 1
        out[q] = docs
    return out, removed


def _pytrec(qrels: dict, run: dict, measures: set[str]) -> dict[str, dict[str, float]]:
    # pytrec_eval skips a query with no run entry at all; an empty dict makes it score 0.
    evaluator = pytrec_eval.RelevanceEvaluator(qrels, measures)
    return evaluator.evaluate({q: run.get(q, {}) for q in qrels})


def paired_pvalue(a: Evaluation, b: Evaluation, measure: str) -> float:
    """Two-sided paired t-test p-value of ``measure`` over the queries both evaluated.

    Returns 1.0 when the per-query differences are all zero (no evidence of a difference).
    """
    from scipy import stats

    common = sorted(set(a.per_query) & set(b.per_query))
    x = [a.per_query[q][measure] for q in common]
    y = [b.per_query[q][measure] for q in common]
    if len(common) < 2 or all(u == v for u, v in zip(x, y)):
        return 1.0
    return float(stats.ttest_rel(x, y).pvalue)
