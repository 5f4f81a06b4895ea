"""The quality bars of the evaluation harness on the full SciFact test split (slow)."""

import copy
import os
from pathlib import Path

import pytest

from npdecode.eval.datasets import load_dataset
from npdecode.eval.experiment import run_experiment

# a folder holding scifact/ in BEIR layout: $NPDECODE_DATA, else the copy CI keeps beside the checkout
DATA = Path(os.environ.get("NPDECODE_DATA") or Path(__file__).resolve().parents[2].parent / "shared" / "data")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (DATA / "scifact").is_dir(), reason=f"needs {DATA}/scifact (set NPDECODE_DATA)"),
]


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    ds = load_dataset("beir/scifact", data_dir=DATA, cache=tmp_path_factory.mktemp("cache"))
    options = {"cache_dir": tmp_path_factory.mktemp("cache"), "device": "cpu"}
    return run_experiment(ds, ["bm25", "dense"], options, k=1000)


def test_bm25_ndcg10_in_published_range(experiment):
    assert 0.64 <= experiment.results[0].evaluation.mean["ndcg_cut_10"] <= 0.70  # BEIR: 0.665


def test_dense_minilm_ndcg10_matches_mteb(experiment):
    assert abs(experiment.results[1].evaluation.mean["ndcg_cut_10"] - 0.645) <= 0.01  # MTEB: 0.6451


def test_metrics_equal_beir_evaluate_on_real_runs(experiment):
    from beir.retrieval.evaluation import EvaluateRetrieval

    qrels = experiment.dataset.qrels.judgments
    for result in experiment.results:
        ndcg, _map, recall, _ = EvaluateRetrieval.evaluate(qrels, copy.deepcopy(result.run), [1, 3, 5, 10, 100])
        mean = result.evaluation.mean
        for k in (1, 3, 5, 10, 100):
            assert round(mean[f"ndcg_cut_{k}"], 5) == pytest.approx(ndcg[f"NDCG@{k}"], abs=1e-6)
        assert round(mean["map_cut_100"], 5) == pytest.approx(_map["MAP@100"], abs=1e-6)
        for k in (1, 5, 10, 100):
            assert round(mean[f"recall_{k}"], 5) == pytest.approx(recall[f"Recall@{k}"], abs=1e-6)
