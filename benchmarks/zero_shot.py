"""Zero-shot protocol on SciFact: seen, appended and new-corpus splits, one recipe across all three.

(a) ``seen``: the 300 test queries, the model trained on the whole corpus (its training qrels);
(b) ``appended``: the model trained on four fifths (their training queries), the held-out fifth
    added with ``npdecode index --append``, the test queries about held-out documents judged on
    those documents, searched over the whole corpus (as benchmarks/append_zero_shot.py);
(c) ``new_corpus``: the same checkpoint as (b) over an index of the held-out fifth alone
    (built with its encoder), the same queries.

BM25 and dense (all-MiniLM-L6-v2, the encoder that makes the CE) run on the same queries over
the same documents for every split. Each recipe trains with the same CPU budget (``--minutes``).

    B=".venv/bin/python benchmarks/zero_shot.py --data-dir $NPDECODE_DATA --threads 1"
    $B --train 'np/base trained-CE' --split full & $B --train 'np/base trained-CE' --split seen
    $B --recipes 'np/base trained-CE' vanilla

Runs live in ``--work`` (default runs/zero-shot): ``full/<name>`` and ``seen/<name>``; finished
runs are reused. Writes benchmarks/results/zero_shot.{md,json}.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import conditions  # benchmarks/conditions.py, on sys.path from here

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MEASURES = ("ndcg_cut_10", "success_1", "success_10", "recall_100")
SPLITS = ("seen", "appended", "new_corpus")


def train_phase(args) -> None:
    """Train one recipe on the whole corpus (``full``) or on the seen four fifths (``seen``)."""
    from append_zero_shot import split_corpus
    from scifact_gr import train

    if args.split == "full":
        run = train(args.train, args.work / "full", args.data_dir, args.minutes, args.threads)
    else:
        seen, _, _ = split_corpus(args.data_dir, args.work, args.fraction, args.seed)
        run = train(args.train, args.work / "seen", None, args.minutes, args.threads, dataset=seen)
    print(f"{args.train} {args.split}: {run['training']['steps']} steps")


def held_out_index(run_dir: Path, held_out: Path) -> Path:
    """(c): the held-out fifth alone, indexed with the checkpoint's encoder and the run's index config."""
    from append_zero_shot import rebuilt_index

    return rebuilt_index(run_dir, held_out, name="index-held-out")


def split_inputs(args, held: set[str]) -> dict:
    """Per split: the queries, the judgments and the corpus file the baselines search."""
    from npdecode.eval.datasets import load_dataset

    ds = load_dataset("beir/scifact", "test", args.data_dir)
    qrels_all = {q: dict(d) for q, d in ds.qrels.judgments.items()}
    held_qrels = {q: {d: g for d, g in docs.items() if d in held and g > 0} for q, docs in qrels_all.items()}
    held_qrels = {q: docs for q, docs in held_qrels.items() if docs}
    held_queries = {q: ds.queries[q] for q in sorted(held_qrels) if q in ds.queries}
    return {
        "seen": (dict(ds.queries), qrels_all, ds.corpus_path),
        "appended": (held_queries, held_qrels, ds.corpus_path),
        "new_corpus": (held_queries, held_qrels, args.work / "held_out.jsonl"),
    }


def validation_inputs(args, held: set[str]) -> tuple[dict, dict]:
    """Training queries about held-out documents (never trained on: the seen split drops them):
    where the memory weight is chosen, apart from the test queries."""
    from npdecode.eval.datasets import load_dataset

    ds = load_dataset("beir/scifact", "train", args.data_dir)
    qrels = {q: {d: g for d, g in docs.items() if d in held and g > 0} for q, docs in ds.qrels.judgments.items()}
    qrels = {q: docs for q, docs in qrels.items() if docs}
    return {q: ds.queries[q] for q in sorted(qrels) if q in ds.queries}, qrels


def _measure(build, queries: dict, qrels: dict, k: int) -> dict:
    from npdecode.eval.metrics import evaluate

    start = time.perf_counter()
    run = build().search(queries, k)
    seconds = time.perf_counter() - start
    mean = evaluate(qrels, run, queries=queries, ignore_identical_ids=True).mean
    return {"metrics": {m: mean[m] for m in mean}, "search_seconds": round(seconds, 1)}


def generative_builders(recipe: str, args, weight: float) -> dict:
    """split -> a builder of the recipe's retriever (the full run for seen, the seen run for the rest)."""
    from append_zero_shot import appended_index
    from scifact_gr import VARIANTS

    from npdecode.search.retrievers.generative import GenerativeRetriever

    name = VARIANTS[recipe][0]
    full, seen = args.work / "full" / name, args.work / "seen" / name
    kind = "genre" if recipe == "vanilla" else "np"
    opts = {"past_beam": "none", "length_penalty": 1.0}
    if kind == "np":
        opts["memory_weight"] = weight
    out = {}
    if (full / "manifest.json").is_file():
        out["seen"] = lambda: GenerativeRetriever(full / "index", kind=kind, **opts)
    if (seen / "manifest.json").is_file():
        appended, _ = appended_index(seen, args.work / "held_out.jsonl")
        new = held_out_index(seen, args.work / "held_out.jsonl")
        out["appended"] = lambda: GenerativeRetriever(appended, kind=kind, **opts)
        out["new_corpus"] = lambda: GenerativeRetriever(new, kind=kind, model=seen / "checkpoint", **opts)
    return out


def seen_validation(args, recipe: str) -> tuple[dict, dict]:
    """The full run's own validation queries (training queries it held out, as
    npdecode/train/examples.py draws them: the same seed and count), judged on all documents."""
    import random

    from scifact_gr import VARIANTS

    from npdecode.eval.datasets import load_dataset

    run = json.loads((args.work / "full" / VARIANTS[recipe][0] / "manifest.json").read_text())
    ds = load_dataset("beir/scifact", "train", args.data_dir)
    judged = sorted(q for q, rel in ds.qrels.judgments.items() if q in ds.queries and any(v > 0 for v in rel.values()))
    random.Random(run["config"]["trainer"]["seed"]).shuffle(judged)
    held = sorted(judged[: run["config"]["validation"]["queries"]])
    return {q: ds.queries[q] for q in held}, {q: dict(ds.qrels.judgments[q]) for q in held}


class MemoryAlone:
    """The CE memory's ranking without the decoder: every identifier group scored by m(q, g)
    (npdecode/memory.py), exhaustively. What the memory knows; the np rows add the decoder."""

    def __init__(self, index_dir: Path, model: Path | None = None):
        from npdecode.search.retrievers.generative import GenerativeRetriever

        self.inner = GenerativeRetriever(index_dir, kind="np", model=model, memory_weight=1.0)

    def search(self, queries: dict, k: int) -> dict:
        import torch

        r, qids, run = self.inner, list(queries), {}
        for lo in range(0, len(qids), 64):
            batch = qids[lo : lo + 64]
            with torch.inference_mode():
                enc, mask = r.model.encode(*r.model.tokenize([queries[q] for q in batch]))
                m = r.memory.group_scores(enc, mask)  # (B, G)
            top = m.topk(min(k, m.shape[1]), dim=1)
            for i, q in enumerate(batch):
                run[q] = {}
                for g, v in zip(top.indices[i].tolist(), top.values[i].tolist()):
                    for d in r.index.live_doc_ids(g):
                        run[q].setdefault(d, v)
        return run


def memory_alone_rows(args, recipe: str, inputs: dict) -> dict:
    """``CE memory alone`` rows over the recipe's indexes (seen, appended, new corpus)."""
    from append_zero_shot import appended_index
    from scifact_gr import VARIANTS

    name = VARIANTS[recipe][0]
    full, seen = args.work / "full" / name, args.work / "seen" / name
    dirs = {
        "seen": (full / "index", None),
        "appended": (appended_index(seen, args.work / "held_out.jsonl")[0], None),
        "new_corpus": (held_out_index(seen, args.work / "held_out.jsonl"), seen / "checkpoint"),
    }
    rows = {}
    for split, (index_dir, model) in dirs.items():
        queries, qrels, _ = inputs[split]
        row = _measure(lambda d=index_dir, m=model: MemoryAlone(d, m), queries, qrels, args.k)
        rows[f"CE memory alone {split}"] = {"variant": "np/memory-alone", "recipe": "CE memory alone", "split": split,
                                            "train_minutes": 0, **row}  # fmt: skip
        print(f"CE memory alone {split}: nDCG@10 {row['metrics']['ndcg_cut_10']:.4f}", flush=True)
    return rows


def choose_weight(recipe: str, args, held: set[str]) -> tuple[float, dict]:
    """The memory weight with the best mean validation nDCG@10 over two sets no run trained on:
    the full run's held-out training queries (seen documents) and the training queries about
    the held-out fifth over the appended index (documents added later). Ties: the smaller."""
    sets = {"seen": seen_validation(args, recipe), "appended": validation_inputs(args, held)}
    sweep: dict[float, dict] = {}
    for w in args.weights:
        builders = generative_builders(recipe, args, w)
        if not {"seen", "appended"} <= set(builders):
            raise SystemExit(f"{recipe}: a run is not finished; train it first (--train, both splits)")
        sweep[w] = {s: _measure(builders[s], *sets[s], 10)["metrics"]["ndcg_cut_10"] for s in sets}
        sweep[w]["mean"] = sum(sweep[w][s] for s in sets) / len(sets)
        print(f"{recipe} validation, memory weight {w:g}: {sweep[w]}", flush=True)
    best = max(sweep, key=lambda w: (sweep[w]["mean"], -w))
    return best, {f"{w:g}": v for w, v in sweep.items()}


def evaluate_all(args, held: set[str]) -> dict:
    """Rows: bm25 and dense per split, and each recipe per split (np with its chosen weight and
    with weight 0, so the memory's share is visible)."""
    from scifact_gr import VARIANTS, train_minutes

    from npdecode.search.registry import build_retriever

    inputs = split_inputs(args, held)
    rows, weights = {}, {}
    if args.memory_alone:
        return {"rows": memory_alone_rows(args, args.memory_alone, inputs), "memory_weights": {},
                "queries": {s: len(v[0]) for s, v in inputs.items()}}  # fmt: skip
    for split, (queries, qrels, corpus) in inputs.items():
        for base in ("bm25", "dense"):
            build = lambda b=base, c=corpus: build_retriever(b, c, {"cache_dir": args.work / "cache"})
            rows[f"{base} {split}"] = {"variant": base, "recipe": base, "split": split, "train_minutes": 0,
                                       **_measure(build, queries, qrels, args.k)}  # fmt: skip
            print(f"{base} {split}: nDCG@10 {rows[f'{base} {split}']['metrics']['ndcg_cut_10']:.4f}", flush=True)
    for recipe in args.recipes:
        weight, sweep = (0.0, {}) if recipe == "vanilla" else choose_weight(recipe, args, held)
        weights[recipe] = {"chosen": weight, "validation_ndcg_cut_10": sweep}
        for w in dict.fromkeys([weight, 0.0]) if recipe != "vanilla" else [0.0]:
            label = recipe if recipe == "vanilla" else f"{recipe} memory {w:g}"
            for split, build in generative_builders(recipe, args, w).items():
                queries, qrels, _ = inputs[split]
                run_dir = args.work / ("full" if split == "seen" else "seen") / VARIANTS[recipe][0]
                manifest = json.loads((run_dir / "manifest.json").read_text())
                rows[f"{label} {split}"] = {
                    "variant": "vanilla" if recipe == "vanilla" else f"np/{recipe.split()[0].split('/')[1]}",
                    "recipe": label,
                    "split": split,
                    "train_minutes": round(train_minutes(run_dir, manifest), 1),
                    "steps": manifest["training"]["steps"],
                    **_measure(build, queries, qrels, args.k),
                }
                print(f"{label} {split}: nDCG@10 {rows[f'{label} {split}']['metrics']['ndcg_cut_10']:.4f}", flush=True)
    return {"rows": rows, "memory_weights": weights,
            "queries": {s: len(v[0]) for s, v in inputs.items()}}  # fmt: skip


def write(result: dict, args) -> None:
    """results/zero_shot.json (rows of an earlier file not measured now are kept) and the .md."""
    import conditions

    path = RESULTS / "zero_shot.json"
    earlier = json.loads(path.read_text()) if path.is_file() else {}
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    for row in result["rows"].values():
        row["date"] = now
    out = {
        "machine": f"{conditions.cpu_name()}, {os.cpu_count()} cores (shared), torch threads {args.threads or 1}",
        "date": now,
        "conditions": conditions.measured(),
        "command": "benchmarks/zero_shot.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "held_out_fraction": args.fraction,
        "seed": args.seed,
        "queries": result["queries"],
        "earlier_commands": [c for c in [*earlier.get("earlier_commands", []), earlier.get("command")] if c],
        "memory_weights": {**earlier.get("memory_weights", {}), **result["memory_weights"]},
        "rows": {**earlier.get("rows", {}), **result["rows"]},
    }
    path.write_text(json.dumps(out, indent=2) + "\n")
    render(out)


def render(out: dict) -> None:
    """zero_shot.md: one table, rows = retrievers, columns = the three splits (nDCG@10, R@100)."""
    recipes = list(dict.fromkeys(r["recipe"] for r in out["rows"].values()))
    q = out["queries"]
    lines = [
        "# Zero-shot SciFact: seen, appended and new-corpus documents",
        "",
        (
            f"{out['date']}, {out['machine']}. (a) seen: the {q['seen']} test queries, trained on the whole corpus; "
            f"(b) appended: trained on four fifths, the held-out fifth ({out.get('held_out_fraction')}, seed "
            f"{out.get('seed')}) added with `npdecode index --append`, the {q['appended']} test queries about it, "
            "judged on it, searched over the whole corpus; (c) new corpus: the (b) checkpoint over an index of the "
            "held-out fifth alone. BM25 and dense (all-MiniLM-L6-v2, the encoder of the CE) on the same queries "
            "and documents. Length penalty 1, beam 10."
        ),
        "",
        (
            "| recipe | train min (a / b,c) | (a) seen nDCG@10 | (b) appended | (c) new corpus "
            "| (a) R@100 | (b) R@100 | (c) R@100 |"
        ),
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for recipe in recipes:
        by = {r["split"]: r for r in out["rows"].values() if r["recipe"] == recipe}

        def cell(s: str, m: str, by: dict = by) -> str:
            return f"{by[s]['metrics'][m]:.4f}" if s in by else "–"

        mins = " / ".join(str(by[s]["train_minutes"]) for s in ("seen", "appended") if s in by)
        lines.append(
            f"| {recipe} | {mins} | {cell('seen', 'ndcg_cut_10')} | {cell('appended', 'ndcg_cut_10')} | "
            f"{cell('new_corpus', 'ndcg_cut_10')} | {cell('seen', 'recall_100')} | {cell('appended', 'recall_100')} | "
            f"{cell('new_corpus', 'recall_100')} |"
        )
    lines += [
        "",
        "Memory weight (np rows): the best mean of two validation nDCG@10s, on queries no run trained on "
        + "(seen: the full run's held-out training queries; appended: the training queries about the "
        + "held-out fifth over the appended index), listed as seen / appended / mean:",
        "",
    ]
    for recipe, w in out.get("memory_weights", {}).items():
        sweep = "; ".join(
            f"{k}: " + " / ".join(f"{v[s]:.4f}" for s in ("seen", "appended", "mean"))
            for k, v in w["validation_ndcg_cut_10"].items()
        )
        lines.append(f"- {recipe}: weight {w['chosen']:g}" + (f" (validation nDCG@10 {sweep})" if sweep else ""))
    lines += [
        "",
        "`memory W`: decoded with the CE memory's lookahead at weight W (npdecode/memory.py; 0 is plain "
        + "Np decoding). `CE memory alone`: every document ranked by the memory's cosine only, no decoder "
        + "(exhaustive). Generative rows decode with beam 10 and no widening, so their R@100 counts only the "
        + "documents the beam finished. Train minutes are wall-clock budgets of runs that shared the two "
        + "cores with another run (steps in the JSON).",
        "",
        f"Command (latest): `{out['command']}`",
    ]
    lines += [f"Earlier: `{c}`" for c in out.get("earlier_commands", [])]
    (RESULTS / "zero_shot.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=conditions.data_dir(),
        help="holds scifact/ in BEIR layout (default $NPDECODE_DATA)",
    )
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "zero-shot")
    parser.add_argument("--train", help="train this recipe (a scifact_gr.py variant) and stop")
    parser.add_argument("--split", choices=["full", "seen"], default="full")
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--recipes", nargs="+", default=["np/base trained-CE", "vanilla"])
    parser.add_argument("--weights", nargs="+", type=float, default=[0.0, 10.0, 30.0, 100.0, 300.0, 1000.0])
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--memory-alone", metavar="RECIPE", help="only the CE memory ranking over its indexes")
    parser.add_argument("--render", action="store_true", help="Rewrite the .md from results/zero_shot.json.")
    args = parser.parse_args()
    if args.render:
        render(json.loads((RESULTS / "zero_shot.json").read_text()))
        return
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.train:
        train_phase(args)
        return
    from append_zero_shot import split_corpus

    _, _, held = split_corpus(args.data_dir, args.work, args.fraction, args.seed)
    write(evaluate_all(args, held), args)


if __name__ == "__main__":
    main()
