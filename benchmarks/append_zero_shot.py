"""Documents added after training (zero-shot): SciFact with a fifth of the corpus held out.

The case Np Decoding is made for: a generative retriever trained on 4/5 of BEIR SciFact (the
training qrels of those documents), then the held-out fifth is added with
``npdecode index --append`` (no retraining) and the test queries *about the held-out documents*
are searched over the whole corpus. Compared on exactly those queries and documents:

- ``<np variant> appended``: the trained Np model over its index + the appended segment (identifier
  tokens of new documents go to existing CE rows, or fill a token's spare capacity up to k);
- ``<np variant> rebuilt``: the same checkpoint over an index of the whole corpus built from scratch with
  its encoder (what an append approximates);
- ``vanilla appended``: the vanilla GR model, new identifiers in its token trie;
- ``bm25`` and ``dense`` over the whole corpus.

    .venv/bin/python benchmarks/append_zero_shot.py --data-dir $NPDECODE_DATA --minutes 15 --threads 1

Training runs (``runs/zero-shot/<variant>``) are reused when finished; ``--np-variants`` names
one or more Np recipes (e.g. ``'np/base trained-CE' 'np/base token-emb'``), ``--variants`` trains a
subset (e.g. np and vanilla in two parallel invocations with ``--skip-eval``). Writes
``benchmarks/results/append_zero_shot.{md,json}``; rows of an earlier results file whose run is
not in ``--work`` are kept (the split is the same for a given seed and fraction), so variants can
be added one at a time.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import shlex
import shutil
import sys
import time
from pathlib import Path

import conditions  # benchmarks/conditions.py: the script's own folder is on sys.path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MEASURES = ("ndcg_cut_10", "success_1", "success_10", "recall_100")


def split_corpus(data_dir: Path, work: Path, fraction: float, seed: int) -> tuple[Path, Path, set[str]]:
    """A BEIR folder of the seen documents (corpus, queries, train qrels of seen documents only)
    and a corpus file of the held-out ones; returns (seen folder, held-out corpus, held-out ids)."""
    src = data_dir / "scifact"
    lines = (src / "corpus.jsonl").read_text(encoding="utf-8").splitlines()
    ids = sorted(json.loads(line)["_id"] for line in lines)
    held = set(random.Random(seed).sample(ids, round(len(ids) * fraction)))
    seen_dir = work / "seen"
    if not (seen_dir / "corpus.jsonl").is_file():
        (seen_dir / "qrels").mkdir(parents=True, exist_ok=True)
        shutil.copy(src / "queries.jsonl", seen_dir / "queries.jsonl")
        rows = (src / "qrels" / "train.tsv").read_text().splitlines()
        kept = [rows[0]] + [r for r in rows[1:] if r.split("\t")[1] not in held]
        (seen_dir / "qrels" / "train.tsv").write_text("\n".join(kept) + "\n")
        (seen_dir / "corpus.jsonl").write_text(
            "".join(line + "\n" for line in lines if json.loads(line)["_id"] not in held), encoding="utf-8"
        )
        (work / "held_out.jsonl").write_text(
            "".join(line + "\n" for line in lines if json.loads(line)["_id"] in held), encoding="utf-8"
        )
    return seen_dir, work / "held_out.jsonl", held


def appended_index(run_dir: Path, held_out: Path) -> tuple[Path, dict]:
    """``run_dir/index-appended``: the run's index + the held-out documents (beside the run's
    checkpoint, so its manifest's ../checkpoint still resolves); and what the append did."""
    from npdecode.index.appender import append_to_index
    from npdecode.index.layout import load_index

    out = run_dir / "index-appended"
    if not (out / "manifest.json").is_file():
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(run_dir / "index", out)
        append_to_index(held_out, out, runtime={"progress": False})
    index = load_index(out)
    seg = index.manifest.segments[-1]
    rows_before = sum(s.rows for s in index.manifest.segments[:-1])
    new = index.groups[-seg.groups :]
    occ = [c for g in new for c in g.ce]
    stats = {
        "documents": sum(len(g.doc_ids) for g in new),
        "occurrences": len(occ),
        "to_existing_rows": sum(c < rows_before for c in occ),
        "new_rows": seg.rows,
    }
    return out, stats


def rebuilt_index(run_dir: Path, full_corpus: Path, name: str = "index-rebuilt") -> Path:
    """``run_dir/name``: a corpus (the whole one, by default) indexed from scratch with the trained
    checkpoint's encoder and the run's index config."""
    from npdecode.index.builder import build_index
    from npdecode.index.layout import load_index

    out = run_dir / name
    if not (out / "manifest.json").is_file():
        shutil.rmtree(out, ignore_errors=True)
        config = load_index(run_dir / "index").manifest.config
        from npdecode.index.config import IndexConfig

        build_index(full_corpus, run_dir / "checkpoint", out, IndexConfig(**{**config, "progress": False}))
    return out


def evaluate_rows(work: Path, data_dir: Path, held: set[str], stats: dict, np_runs: dict[str, str], k: int) -> dict:
    """Rows for BM25, dense and every finished run among ``np_runs`` (variant -> run name) and vanilla."""
    from npdecode.eval.datasets import load_dataset
    from npdecode.eval.metrics import evaluate
    from npdecode.search.registry import build_retriever
    from npdecode.search.retrievers.generative import GenerativeRetriever

    ds = load_dataset("beir/scifact", "test", data_dir)
    qrels = {q: {d: g for d, g in docs.items() if d in held and g > 0} for q, docs in ds.qrels.judgments.items()}
    qrels = {q: docs for q, docs in qrels.items() if docs}
    queries = {q: ds.queries[q] for q in sorted(qrels) if q in ds.queries}
    full = ds.corpus_path
    builders = {
        "bm25": lambda: build_retriever("bm25", full, {"cache_dir": work / "cache"}),
        "dense": lambda: build_retriever("dense", full, {"cache_dir": work / "cache"}),
    }
    for variant, np_run in np_runs.items():
        np_dir = work / np_run
        if not (np_dir / "manifest.json").is_file():
            continue
        appended, stats[variant] = appended_index(np_dir, work / "held_out.jsonl")
        rebuilt = rebuilt_index(np_dir, full)
        for lp in (0.0, 1.0):
            suffix = " lp1" if lp else ""
            builders[f"{variant} appended{suffix}"] = lambda d=appended, lp=lp: GenerativeRetriever(
                d, kind="np", length_penalty=lp, past_beam="none"
            )
            builders[f"{variant} rebuilt{suffix}"] = lambda d=rebuilt, c=np_dir / "checkpoint", lp=lp: (
                GenerativeRetriever(d, kind="np", model=c, length_penalty=lp, past_beam="none")
            )
    if (work / "vanilla" / "manifest.json").is_file():
        appended, stats["vanilla"] = appended_index(work / "vanilla", work / "held_out.jsonl")
        builders["vanilla appended"] = lambda d=appended: GenerativeRetriever(d, kind="genre", past_beam="none")
    rows = {}
    for name, build in builders.items():
        start = time.perf_counter()
        run = build().search(queries, k)
        seconds = time.perf_counter() - start
        mean = evaluate(qrels, run, queries=queries, ignore_identical_ids=True).mean
        rows[name] = {
            "metrics": {m: mean[m] for m in mean},
            "search_seconds": round(seconds, 1),
            "found_held_out_at_1": sum(1 for q in queries if run.get(q) and max(run[q], key=run[q].get) in held),
        }
        print(f"{name}: nDCG@10 {mean['ndcg_cut_10']:.4f} Hits@1 {mean['success_1']:.4f} ({seconds:.0f} s)", flush=True)
    return {"queries": len(queries), "held_out_documents": len(held), "rows": rows}


def write(result: dict, stats: dict, trained: dict, args) -> None:
    """Results JSON + .md; rows, training and append stats of an earlier file (same split) whose
    run was not evaluated now are kept, each row with the date it was measured."""
    from scifact_gr import VARIANTS, train_minutes

    path = RESULTS / "append_zero_shot.json"
    earlier = json.loads(path.read_text()) if path.is_file() else {}
    same_split = earlier.get("held_out_fraction") == args.fraction and earlier.get("seed") == args.seed
    if not same_split:
        earlier = {}
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    for row in result["rows"].values():
        row["date"] = now
    rows = {**{n: result["rows"].get(n, r) for n, r in earlier.get("rows", {}).items()}, **result["rows"]}
    command = "benchmarks/append_zero_shot.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    machine = f"{conditions.cpu_name()}, {os.cpu_count()} cores (shared), torch threads {args.threads or 'default'}"
    out = {
        "machine": machine,
        "date": now,
        "conditions": conditions.measured(),
        "command": command,
        "earlier_commands": [c for c in [*earlier.get("earlier_commands", []), earlier.get("command")] if c],
        "held_out_fraction": args.fraction,
        "seed": args.seed,
        "np_variants": list(dict.fromkeys(earlier.get("np_variants", []) + args.np_variants)),
        "training": {  # minutes of training: both stages for contrastive
            **earlier.get("training", {}),
            **{
                v: {"steps": r["training"]["steps"], "minutes": train_minutes(args.work / VARIANTS[v][0], r)}
                for v, r in trained.items()
            },
        },
        "append": {**earlier.get("append", {}), **stats},
        **result,
        "rows": rows,
    }
    path.write_text(json.dumps(out, indent=2) + "\n")
    render(out)


def render(out: dict) -> None:
    """``append_zero_shot.md`` from the results JSON (``--render`` redoes it alone)."""
    lines = [
        "# Documents added after training: SciFact, a fifth of the corpus held out",
        "",
        (
            f"{out['date']}, {out['machine']}. {out['held_out_documents']} of 5,183 documents held out of "
            f"training (seed {out['seed']}) and added with `npdecode index --append`; the {out['queries']} test "
            "queries with a relevant held-out document, judged on the held-out documents only, searched over the "
            f"whole corpus. Np variants: {', '.join(out['np_variants'])}; training (one CPU thread each): "
            + ", ".join(f"{v} {t['minutes']} min ({t['steps']} steps)" for v, t in out["training"].items())
            + "."
        ),
        "",
        "| row | nDCG@10 | Hits@1 | Hits@10 | R@100 | top-1 is a held-out doc | search s | measured |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, row in out["rows"].items():
        m = row["metrics"]
        lines.append(
            f"| {name} | {m['ndcg_cut_10']:.4f} | {m['success_1']:.4f} | {m['success_10']:.4f} | "
            f"{m['recall_100']:.4f} | {row['found_held_out_at_1']} | {row['search_seconds']} | {row['date'][:10]} |"
        )
    for variant in out["np_variants"]:
        s = out["append"].get(variant)
        if s:
            lines += [
                "",
                (
                    f"The {variant} append: {s['documents']} documents, {s['occurrences']} identifier tokens, "
                    f"{s['to_existing_rows']} assigned to existing CE rows, {s['new_rows']} new rows (unseen tokens, "
                    "and known tokens with fewer than k rows filled up to k, as a rebuild would)."
                ),
            ]
    lines += [
        "",
        (
            "`rebuilt`: the same checkpoint over an index of the whole corpus built from scratch with its "
            "encoder. `lp1`: length penalty 1 (the score divided by the identifier's length)."
        ),
    ]
    lines += ["", f"Command: `{out['command']}`"]
    lines += [f"Earlier rows: `{c}`" for c in out.get("earlier_commands", [])]
    (RESULTS / "append_zero_shot.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    from scifact_gr import VARIANTS, train

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=conditions.data_dir(),
        help="Holds scifact/ in BEIR layout (default $NPDECODE_DATA).",
    )
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "zero-shot")
    parser.add_argument(
        "--np-variants", nargs="+", default=["np/base"], choices=[v for v in VARIANTS if v.startswith("np")]
    )
    parser.add_argument("--variants", nargs="+", default=None, help="Train these (default: the np variants, vanilla).")
    parser.add_argument("--fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--skip-eval", action="store_true")
    parser.add_argument("--render", action="store_true", help="Rewrite the .md from results/append_zero_shot.json.")
    args = parser.parse_args()
    if args.render:
        render(json.loads((RESULTS / "append_zero_shot.json").read_text()))
        return
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    seen_dir, _, held = split_corpus(args.data_dir, args.work, args.fraction, args.seed)
    variants = args.variants or [*args.np_variants, "vanilla"]
    trained = {v: train(v, args.work, None, args.minutes, args.threads, dataset=seen_dir) for v in variants}
    if args.skip_eval:
        return
    for v in (*args.np_variants, "vanilla"):
        manifest = args.work / VARIANTS[v][0] / "manifest.json"
        if v not in trained and manifest.is_file():
            trained[v] = json.loads(manifest.read_text())
    stats: dict = {}
    np_runs = {v: VARIANTS[v][0] for v in args.np_variants}
    result = evaluate_rows(args.work, args.data_dir, held, stats, np_runs, args.k)
    write(result, stats, trained, args)


if __name__ == "__main__":
    main()
