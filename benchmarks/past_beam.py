"""k documents from a generative retriever: ranking past the beam vs widening it, on SciFact.

One trained Np index (default: the zero-shot benchmark's full-corpus run,
``runs/zero-shot/full/np-train-ce/index``; any index dir with a trained checkpoint works), the
SciFact test queries, the retriever loaded once. Timed, side by side in one process, each the
median of ``--repeats`` searches of the same queries:

- ``one beam``: what a beam of 10 finishes (``past_beam="none"``), the time every other row is
  compared with;
- ``prefix k=100 / 1000``: the default, documents past the beam ranked by the score of their
  longest scored identifier prefix (npdecode/decoding.py ``_fill``; no extra decoding);
- ``widen k=100 / 1000``: the beam doubled and the queries that found fewer than k decoded
  again, up to width k (today's exact widening; run on ``--widen-queries`` of them, with its own
  one-beam time on the same queries, as it takes ~50x).

Quality of every row with the eval harness: nDCG@10, R@100, R@1000 (BM25 and dense beside it in
benchmarks/results/zero_shot.md for the same corpus). Writes benchmarks/results/past_beam.{json,md}.

Usage: PYTHONPATH=. .venv/bin/python benchmarks/past_beam.py --threads 2 [--index DIR] [--data-dir DIR]
       [--memory-weight 0 --memory-weight 1000] [--widen-queries 100] [--repeats 3]
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import time
from pathlib import Path

import conditions  # benchmarks/conditions.py: the script's own folder is on sys.path
import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MEASURES = ("ndcg_cut_10", "recall_100", "recall_1000")


def scores(ds, run: dict, queries: dict[str, str]) -> dict[str, float]:
    from npdecode.eval.metrics import evaluate

    ev = evaluate(ds.qrels.judgments, run, queries=queries, ignore_identical_ids=ds.ignore_identical_ids)
    return {m: round(ev.mean[m], 4) for m in MEASURES}


def measure(args, ds, weight: float) -> list[dict]:
    """Rows of one memory weight. The cheap methods are timed interleaved (repeat r runs each of
    them once), so load from other work on the shared cores falls on all of them alike."""
    from npdecode.search.retrievers.generative import GenerativeRetriever

    retriever = GenerativeRetriever(args.index, kind="np", memory_weight=weight, progress=False)
    queries = dict(list(ds.queries.items())[: args.queries])
    subset = dict(list(queries.items())[: args.widen_queries])
    cheap = [("one beam (beam's own)", "none", 1000, queries), ("prefix k=100 (default)", "prefix", 100, queries),
             ("prefix k=1000 (default)", "prefix", 1000, queries)]  # fmt: skip
    if subset:
        cheap += [("one beam (widen's queries)", "none", 1000, subset),
                  ("prefix k=100 (widen's queries)", "prefix", 100, subset),
                  ("prefix k=1000 (widen's queries)", "prefix", 1000, subset)]  # fmt: skip
    slow = [(f"widen k={k}", "widen", k, subset) for k in (100, 1000)] if subset else []

    def once(rule, k, qs):
        retriever.options = retriever.options.model_copy(update={"past_beam": rule})
        t0 = time.perf_counter()
        run = retriever.search(qs, k)
        return run, time.perf_counter() - t0

    once("prefix", 1000, dict(list(queries.items())[:8]))  # warm-up: lazy loads, first-call allocations
    times: dict[str, list[float]] = {name: [] for name, *_ in cheap + slow}
    runs: dict[str, dict] = {}
    for _ in range(args.repeats):
        for name, rule, k, qs in cheap:
            runs[name], t = once(rule, k, qs)
            times[name].append(t)
    for name, rule, k, qs in slow:
        runs[name], t = once(rule, k, qs)
        times[name].append(t)
    rows = []
    for name, rule, k, qs in cheap + slow:
        base = "one beam (beam's own)" if qs is queries else "one beam (widen's queries)"
        secs = statistics.median(times[name])
        found = sum(len(d) for d in runs[name].values()) / max(len(runs[name]), 1)
        rows.append({"memory_weight": weight, "method": name, "past_beam": rule, "k": k, "queries": len(qs),
                     "seconds": round(secs, 2), "times": [round(t, 2) for t in times[name]],
                     "x_one_beam": round(secs / statistics.median(times[base]), 2),
                     "x_one_beam_min": round(min(times[name]) / min(times[base]), 2),
                     "docs_per_query": round(found, 1), **scores(ds, runs[name], qs)})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    return rows


def render(result: dict) -> str:
    m = result["machine"]
    lines = [
        "# k documents from the generative retriever: ranked past the beam vs widened",
        "",
        f"{result['date']}, {m['cpu']}, {m['nproc']} cores (shared), torch threads {m['torch_threads']}, "
        + f"load average {m['load_average_before']} -> {m['load_average_after']} (other work ran beside it). "
        f"Index: `{result['index']}` (np/base trained CE, SciFact full corpus, beam 10, length penalty 1). "
        f"Command: `{result['command']}`.",
        "",
        NOTE,
        "",
        "| memory W | method | queries | k | docs/query | search s (median) | x one beam (median / min) "
        + "| nDCG@10 | R@100 | R@1000 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["rows"]:
        k = r["k"] if r["past_beam"] != "none" else "-"
        lines.append(
            f"| {r['memory_weight']:g} | {r['method']} | {r['queries']} | {k} | {r['docs_per_query']} "
            f"| {r['seconds']} | {r['x_one_beam']} / {r['x_one_beam_min']} | {r['ndcg_cut_10']:.3f} "
            f"| {r['recall_100']:.3f} | {r['recall_1000']:.3f} |"
        )
    return "\n".join(lines) + "\n"


NOTE = (
    "`x one beam`: search time over the one-beam search of the same queries, as the ratio of medians "
    "and of minimums (model loaded once, not counted; the cheap rows timed interleaved, `--repeats` "
    "each; widening once). `prefix`: documents past the beam ranked by the score of their longest "
    "identifier prefix the beam search scored (no extra decoding); `widen`: the beam doubled until "
    "k documents are found (exact beam search at width k). The first documents of the prefix rows are "
    "the beam's own (tests/core/test_past_beam.py), so their nDCG@10 equals one beam's; widening "
    "re-decodes, so its top 10 may change."
)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--index", type=Path, default=ROOT / "runs" / "zero-shot" / "full" / "np-train-ce" / "index")
    p.add_argument(
        "--data-dir",
        type=Path,
        default=conditions.data_dir(),
        help="Holds scifact/ in BEIR layout (default $NPDECODE_DATA).",
    )
    p.add_argument("--queries", type=int, default=300)
    p.add_argument("--widen-queries", type=int, default=100, help="queries the widening rows run (0: none)")
    p.add_argument("--memory-weight", type=float, action="append", help="repeatable (default 0)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=RESULTS / "past_beam")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from npdecode.eval.datasets import load_dataset

    ds = load_dataset("beir/scifact", "test", args.data_dir)
    rows = []
    for weight in args.memory_weight or [0.0]:
        rows += measure(args, ds, weight)
    index = args.index.resolve()
    weights = " ".join(f"--memory-weight {w:g}" for w in (args.memory_weight or [0.0]))
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": conditions.measured(),
        "index": str(index.relative_to(ROOT)) if index.is_relative_to(ROOT) else str(index),
        "command": f"benchmarks/past_beam.py {weights} --queries {args.queries} --widen-queries "
        f"{args.widen_queries} --repeats {args.repeats} --threads {args.threads}",
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(render(result))
    print(render(result))


if __name__ == "__main__":
    main()
