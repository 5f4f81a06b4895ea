"""Baselines on full BEIR SciFact (test): quality against the published anchors, and our
metric code against BEIR's ``EvaluateRetrieval.evaluate`` on the same runs (equality + time).

Usage: python benchmarks/eval_baselines.py [--data-dir $NPDECODE_DATA] [--out benchmarks/results/eval_baselines.json]
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import statistics
import tempfile
import time
from pathlib import Path

import conditions  # benchmarks/conditions.py: the script's own folder is on sys.path

from npdecode.eval.datasets import load_dataset
from npdecode.eval.experiment import run_experiment
from npdecode.eval.metrics import evaluate

ANCHORS = {"bm25": 0.665, "dense": 0.6451}  # BEIR paper BM25; MTEB all-MiniLM-L6-v2


def _median_time(fn, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", type=Path, default=conditions.data_dir())
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "eval_baselines.json")
    args = parser.parse_args()
    from beir.retrieval.evaluation import EvaluateRetrieval

    cache = Path(tempfile.mkdtemp(prefix="npdecode-bench-"))
    ds = load_dataset("beir/scifact", data_dir=args.data_dir, cache=cache)
    exp = run_experiment(ds, ["bm25", "dense"], {"cache_dir": cache, "device": "cpu"}, k=1000, progress=print)
    qrels = ds.qrels.judgments
    rows = {}
    for result in exp.results:
        ours = result.evaluation.mean
        beir_ndcg, _, beir_recall, _ = EvaluateRetrieval.evaluate(qrels, copy.deepcopy(result.run), [10, 100])
        rows[result.name] = {
            "ndcg_cut_10": ours["ndcg_cut_10"],
            "recall_100": ours["recall_100"],
            "published_ndcg_cut_10": ANCHORS[result.name],
            "beir_evaluate_ndcg_cut_10": beir_ndcg["NDCG@10"],
            "max_abs_diff_vs_beir_after_rounding": max(
                abs(round(ours["ndcg_cut_10"], 5) - beir_ndcg["NDCG@10"]),
                abs(round(ours["recall_100"], 5) - beir_recall["Recall@100"]),
            ),
            "index_and_search_seconds": round(result.seconds, 2),
            "metrics_seconds_ours_all_measures_median": _median_time(
                lambda r=result: evaluate(qrels, r.run, ignore_identical_ids=True)
            ),
            "metrics_seconds_beir_ndcg_map_recall_p_median": _median_time(
                lambda r=result: EvaluateRetrieval.evaluate(qrels, copy.deepcopy(r.run), [1, 3, 5, 10, 100, 1000])
            ),
        }
    report = {
        "benchmark": "eval_baselines",
        "dataset": "beir/scifact test (300 queries, 5,183 docs)",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": conditions.measured(),
        "command": "python benchmarks/eval_baselines.py",
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
