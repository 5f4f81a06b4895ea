import copy
import math
import random

import pytest

from npdecode.errors import NpdecodeError
from npdecode.eval.metrics import evaluate, paired_pvalue

QRELS = {"q1": {"d1": 2, "d2": 1, "d3": 0}, "q2": {"d4": 1}, "q3": {"d5": 1}}
RUN = {
    "q1": {"d3": 3.0, "d1": 2.0, "dx": 1.5, "d2": 1.0},  # ranks: d3 (0), d1 (2), dx, d2 (1)
    "q2": {"dy": 2.0, "d4": 1.0},
    "q4": {"d1": 1.0},  # not judged: excluded
}
L3, L5 = math.log2(3), math.log2(5)


def test_golden_values_computed_by_hand():
    ev = evaluate(QRELS, RUN, queries=["q1", "q2", "q3", "q4"])
    assert ev.num_queries == 3  # q3 judged but unanswered counts (as 0); q4 unjudged excluded
    q1, q2, q3 = ev.per_query["q1"], ev.per_query["q2"], ev.per_query["q3"]
    idcg = 2 + 1 / L3
    assert q1["ndcg_cut_1"] == pytest.approx(0.0)
    assert q1["ndcg_cut_3"] == pytest.approx((2 / L3) / idcg)
    assert q1["ndcg_cut_10"] == pytest.approx((2 / L3 + 1 / L5) / idcg)
    assert (q1["recall_1"], q1["recall_5"]) == (0.0, 1.0)
    assert (q1["success_1"], q1["success_5"]) == (0.0, 1.0)
    assert q1["recip_rank"] == pytest.approx(0.5)
    assert q1["recip_rank_cut_10"] == pytest.approx(0.5)
    assert q1["Rprec"] == pytest.approx(0.5)
    assert q1["map_cut_100"] == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert q2["ndcg_cut_10"] == pytest.approx(1 / L3)
    assert q2["Rprec"] == 0.0 and q2["map_cut_100"] == pytest.approx(0.5)
    assert all(v == 0.0 for v in q3.values())
    assert ev.mean["ndcg_cut_10"] == pytest.approx(((2 / L3 + 1 / L5) / idcg + 1 / L3) / 3)
    assert ev.mean["recip_rank"] == pytest.approx(1 / 3)


def test_mrr_cutoff_uses_the_truncated_run():
    ev = evaluate({"q": {"d3": 1}}, {"q": {"d1": 3.0, "d2": 2.0, "d3": 1.0}}, mrr_cutoffs=(2, 3))
    assert ev.per_query["q"]["recip_rank_cut_2"] == 0.0
    assert ev.per_query["q"]["recip_rank_cut_3"] == pytest.approx(1 / 3)


def test_default_queries_are_the_run_and_inputs_are_not_mutated():
    qrels, run = copy.deepcopy(QRELS), copy.deepcopy(RUN)
    ev = evaluate(qrels, run, ignore_identical_ids=True)
    assert set(ev.per_query) == {"q1", "q2"}
    assert qrels == QRELS and run == RUN


def test_identical_ids_are_dropped_only_on_request():
    qrels, run = {"q": {"q": 1, "d": 1}}, {"q": {"q": 2.0, "d": 1.0}}
    assert evaluate(qrels, run).per_query["q"]["success_1"] == 1.0
    dropped = evaluate(qrels, run, ignore_identical_ids=True)
    assert dropped.removed_identical == 1 and dropped.per_query["q"]["recall_1000"] == 0.5
    assert run == {"q": {"q": 2.0, "d": 1.0}}


def test_errors():
    with pytest.raises(NpdecodeError, match="no judged query"):
        evaluate(QRELS, {"zz": {"d1": 1.0}})
    with pytest.raises(NpdecodeError, match="non-finite"):
        evaluate(QRELS, {"q1": {"d1": float("nan")}})


def test_paired_pvalue():
    a = evaluate(QRELS, RUN, queries=["q1", "q2", "q3"])
    assert paired_pvalue(a, a, "ndcg_cut_10") == 1.0
    better = evaluate(QRELS, {"q1": {"d1": 2.0, "d2": 1.0}, "q2": {"d4": 1.0}, "q3": {"d5": 1.0}})
    assert 0.0 < paired_pvalue(a, better, "ndcg_cut_10") < 1.0


def _random_case(seed: int, n_queries: int = 60, n_docs: int = 200):
    rng = random.Random(seed)
    docs = [f"d{i}" for i in range(n_docs)]
    qrels = {
        f"q{i}": {d: rng.choice([0, 1, 1, 2, 3]) for d in rng.sample(docs, rng.randint(1, 6))} for i in range(n_queries)
    }
    # distinct scores so the ranking is the same under any tie-break rule
    run = {q: {d: s for d, s in zip(rng.sample(docs, 120), rng.sample(range(10**6), 120))} for q in qrels}
    run = {q: {d: float(s) / 1000 for d, s in docs_.items()} for q, docs_ in run.items()}
    return qrels, run


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equal_to_beir_evaluate(seed):
    from beir.retrieval.evaluation import EvaluateRetrieval

    qrels, run = _random_case(seed)
    ks = [1, 3, 5, 10, 100]
    ndcg, _map, recall, _ = EvaluateRetrieval.evaluate(qrels, copy.deepcopy(run), ks, ignore_identical_ids=False)
    mrr = EvaluateRetrieval.evaluate_custom(qrels, run, [10, 100], metric="mrr")
    ev = evaluate(qrels, run, measures=("ndcg_cut.1,3,5,10,100", "map_cut.1,3,5,10,100", "recall.1,3,5,10,100"))
    for k in ks:
        # BEIR rounds its means to 5 decimals
        assert round(ev.mean[f"ndcg_cut_{k}"], 5) == pytest.approx(ndcg[f"NDCG@{k}"], abs=1e-6)
        assert round(ev.mean[f"map_cut_{k}"], 5) == pytest.approx(_map[f"MAP@{k}"], abs=1e-6)
        assert round(ev.mean[f"recall_{k}"], 5) == pytest.approx(recall[f"Recall@{k}"], abs=1e-6)
    for k in (10, 100):
        assert round(ev.mean[f"recip_rank_cut_{k}"], 5) == pytest.approx(mrr[f"MRR@{k}"], abs=1e-6)
