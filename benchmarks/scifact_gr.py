"""Generative retrieval on full BEIR SciFact: trained np and vanilla beside BM25 and dense.

Trains each variant with ``configs/train-scifact-cpu.yml`` (bert2bert from all-MiniLM-L6-v2,
the 5,183-document corpus indexed, training qrels -> the 300 test queries) under the same
wall-clock budget, then evaluates every retriever on the test split in one experiment and
writes ``benchmarks/results/scifact_gr.md`` and ``.json``. Finished runs are reused, so the
variants can be trained in separate (parallel) invocations and evaluated in a last one:

    .venv/bin/python benchmarks/scifact_gr.py --data-dir $NPDECODE_DATA --variants np --skip-eval --threads 1 &
    .venv/bin/python benchmarks/scifact_gr.py --data-dir $NPDECODE_DATA --variants vanilla --skip-eval --threads 1
    .venv/bin/python benchmarks/scifact_gr.py --data-dir $NPDECODE_DATA

The np retriever is evaluated with both tries (CE ids, token ids with log-sum-exp over a token's
rows) and both scorings (raw sum of log-probabilities, length penalty 1.0 = sum / length); each
generative retriever returns what one beam of 10 finds (no widening to k).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shlex
import sys
import time
from pathlib import Path

import conditions  # benchmarks/conditions.py: the script's own folder is on sys.path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CONFIG = ROOT / "configs" / "train-scifact-cpu.yml"
# async trains the encoder's top layer (CE rebuilt from it every 2 epochs); the states entering
# it are cached (the layers below are frozen)
ASYNC = (
    "model.ce_encoder=async",
    "model.freeze_encoder=false",
    "model.train_encoder_layers=1",
    "model.async_every_n_epochs=2",
    "optim.encoder_lr=1e-4",
)
# variant -> (run dir, --set items); every np variant trains with the same recipe otherwise.
VARIANTS = {
    "np/base": ("np", ()),
    "np/async": ("np-async", ASYNC),
    "np/contrastive": ("np-contrastive", ("model.ce_encoder=contrastive",)),
    "vanilla": ("vanilla", ("model.variant=vanilla", "model.learn_scale=false", "model.sampled_negatives=null")),
    # the ablation DESIGN.md allows (the paper keeps CE frozen): np/base with the CE table trained too
    "np/base trained-CE": ("np-train-ce", ("model.train_ce=true",)),
    "np/contrastive trained-CE": ("np-contrastive-train-ce", ("model.ce_encoder=contrastive", "model.train_ce=true")),
    # CE frozen, plus a trainable embedding per token added to its rows (model.token_embeddings)
    "np/base token-emb": ("np-token-emb", ("model.token_embeddings=true",)),
    "np/async token-emb": ("np-async-token-emb", ASYNC + ("model.token_embeddings=true",)),
    "np/contrastive token-emb": (
        "np-contrastive-token-emb",
        ("model.ce_encoder=contrastive", "model.token_embeddings=true"),
    ),
}
CONTRASTIVE_SHARE = 0.3  # of the budget, for stage 1 (stage 2 gets the rest)
DECODINGS = {
    "": ("ce", 0.0),
    " token-trie": ("token", 0.0),
    " group-trie": ("group", 0.0),
    " lp1": ("ce", 1.0),
    " token-trie lp1": ("token", 1.0),
    " group-trie lp1": ("group", 1.0),
}


def run_labels(runs: Path) -> dict[str, tuple[str, Path]]:
    """Finished runs: label -> (variant, run dir). The comparison's runs are labelled by their
    variant; a longer run of a variant (``--long``, dir ``<name>-<M>min``) by variant + budget."""
    found = {}
    for variant, (name, _) in VARIANTS.items():
        if (runs / name / "manifest.json").is_file():
            found[variant] = (variant, runs / name)
        for longer in sorted(runs.glob(f"{name}-*min")):  # np-60min, not np-contrastive-60min
            tag = longer.name.removeprefix(name + "-")
            if re.fullmatch(r"[0-9.]+min", tag) and (longer / "manifest.json").is_file():
                found[f"{variant} {tag}"] = (variant, longer)
    return found


def train(
    variant: str,
    runs: Path,
    data_dir: Path | None,
    minutes: float,
    threads: int | None,
    tag: str = "",
    dataset: Path | None = None,
) -> dict:
    """Train ``variant`` with ``minutes`` of budget into ``runs/<name>[-tag]`` (reused when finished);
    ``dataset`` (a BEIR folder) replaces the config's SciFact."""
    from npdecode.train.config import load_train_config
    from npdecode.train.run import MANIFEST, train_run

    name, sets = VARIANTS[variant]
    out = runs / (f"{name}-{tag}" if tag else name)
    if (out / MANIFEST).is_file():
        return json.loads((out / MANIFEST).read_text())
    if "model.ce_encoder=contrastive" in sets:  # one budget for both stages
        sets += (
            f"contrastive.max_minutes={minutes * CONTRASTIVE_SHARE}",
            f"trainer.max_minutes={minutes * (1 - CONTRASTIVE_SHARE)}",
        )
    else:
        sets += (f"trainer.max_minutes={minutes}",)
    sets += ("trainer.progress=false",) + ((f"trainer.threads={threads}",) if threads else ())
    where = {"data.dataset": str(dataset)} if dataset is not None else {"data.data_dir": str(data_dir)}
    config = load_train_config(CONFIG, sets, **where)
    start = time.perf_counter()
    run = train_run(config, out, resume=out.exists(), say=print)
    run["wall_minutes"] = round((time.perf_counter() - start) / 60, 1)
    (out / "bench.json").write_text(json.dumps({"wall_minutes": run["wall_minutes"]}))
    return run


def train_minutes(run_dir: Path, run: dict) -> float:
    """Minutes of training: the fit, plus stage 1 for contrastive (from its Lightning timer)."""
    minutes = run["training"]["seconds"] / 60
    stage1 = run_dir / "contrastive" / "lightning" / "last.ckpt"
    if stage1.is_file():
        import torch

        saved = torch.load(stage1, map_location="cpu", weights_only=False)
        timers = [v for k, v in saved.get("callbacks", {}).items() if k.startswith("Timer")]
        if timers:
            minutes += timers[0]["time_elapsed"]["train"] / 60
    return round(minutes, 1)


def evaluate_all(runs: Path, data_dir: Path, k: int, done: dict | None = None) -> tuple[dict, dict]:
    """Every row's metrics and search seconds; rows in ``done`` (name -> row of an earlier
    results file) are taken from it instead of searched again."""
    from npdecode.eval.datasets import load_dataset
    from npdecode.eval.metrics import evaluate
    from npdecode.search.registry import build_retriever
    from npdecode.search.retrievers.generative import GenerativeRetriever

    ds = load_dataset("beir/scifact", "test", data_dir)
    builders = {
        "bm25": lambda: build_retriever("bm25", ds.corpus_path, {"cache_dir": runs / "cache"}),
        "dense": lambda: build_retriever("dense", ds.corpus_path, {"cache_dir": runs / "cache"}),
    }
    for label, (variant, run_dir) in run_labels(runs).items():
        if not variant.startswith("np"):
            builders[label] = lambda d=run_dir / "index": GenerativeRetriever(d, kind="genre", past_beam="none")
            continue
        for suffix, (mode, lp) in DECODINGS.items():
            builders[label + suffix] = lambda d=run_dir / "index", mode=mode, lp=lp: GenerativeRetriever(
                d, kind="np", trie_mode=mode, length_penalty=lp, past_beam="none"
            )
    metrics, seconds = {}, {}
    for name, build in builders.items():
        if done and name in done:
            metrics[name], seconds[name] = done[name]["metrics"], done[name]["search_seconds"]
            continue
        start = time.perf_counter()
        run = build().search(ds.queries, k)
        seconds[name] = time.perf_counter() - start
        metrics[name] = evaluate(ds.qrels.judgments, run, queries=ds.queries, ignore_identical_ids=True).mean
        print(f"{name}: nDCG@10 {metrics[name]['ndcg_cut_10']:.4f} ({seconds[name]:.0f} s)", flush=True)
    return metrics, seconds


def validation_length_penalty(run_dir: Path, data_dir: Path) -> dict[str, float]:
    """nDCG@10 of the run's held-out *training* queries (its validation set, never the test
    split) decoded with length penalty 0 and 1: the data the default is picked on."""
    from npdecode.corpus import load_corpus
    from npdecode.eval.metrics import evaluate
    from npdecode.index.layout import load_index
    from npdecode.search.retrievers.generative import GenerativeRetriever
    from npdecode.train.config import TrainConfig
    from npdecode.train.examples import build_examples, doc_groups
    from npdecode.train.sources import load_training_data

    config = TrainConfig(**json.loads((run_dir / "manifest.json").read_text())["config"])
    data = load_training_data(config.data.dataset, str(data_dir), config.data.train_split)
    index = load_index(run_dir / "index")
    _, validation = build_examples(
        load_corpus(data.corpus_path),
        doc_groups(index.members),
        data.queries,
        data.qrels,
        config.data,
        n_validation=config.validation.queries,
        seed=config.trainer.seed,
    )
    out = {}
    for lp in (0.0, 1.0):
        run = GenerativeRetriever(run_dir / "index", kind="np", length_penalty=lp, past_beam="none").search(
            validation.queries, 100
        )
        out[str(lp)] = evaluate(validation.qrels, run, queries=validation.queries).mean["ndcg_cut_10"]
    return out


def write(metrics: dict, seconds: dict, args, by_lp: dict | None = None, earlier: dict | None = None) -> None:
    """Results JSON + .md. Rows of ``earlier`` (an earlier results file) that were not searched
    now, because their run is not in ``args.runs``, are kept in their place."""
    machine = f"{conditions.cpu_name()}, {os.cpu_count()} cores (shared), torch threads {args.threads or 'default'}"
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    rows = {}
    labels = run_labels(args.runs)
    for name, m in metrics.items():
        label = label_of(name, labels)
        variant, run_dir = labels[label] if label else (name, None)
        run = json.loads((run_dir / "manifest.json").read_text()) if run_dir else None
        minutes = train_minutes(run_dir, run) if run else 0
        rows[name] = {
            "variant": variant.split(" ")[0],  # np/base trained-CE is an np/base run
            "train_minutes": minutes,
            "metrics": m,
            "search_seconds": round(seconds[name], 1),
        }
        if run:
            rows[name]["run_created"] = run["created"]
            rows[name]["training"] = run["training"]
            rows[name]["validation"] = run["metrics"]["validation"]
            rows[name]["memorisation_success_1"] = run["metrics"]["memorisation_success_1"]
    if earlier:
        rows = {**{n: rows.get(n, r) for n, r in earlier["rows"].items()}, **rows}
        by_lp = {**earlier.get("validation_ndcg_cut_10_by_length_penalty", {}), **(by_lp or {})}
    out = {
        "machine": machine,
        "date": date,
        "conditions": conditions.measured(),
        "command": "benchmarks/scifact_gr.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "config": str(CONFIG.relative_to(ROOT)),
        "rows": rows,
        "validation_ndcg_cut_10_by_length_penalty": by_lp or {},
        "notes": earlier.get("notes", []) if earlier else [],
    }
    (RESULTS / "scifact_gr.json").write_text(json.dumps(out, indent=2) + "\n")
    render(out)


def label_of(name: str, labels: dict) -> str | None:
    """The run label a row name belongs to (``np/base token-trie lp1`` -> ``np/base``), or None."""
    return max((lb for lb in labels if name == lb or name.startswith(lb + " ")), key=len, default=None)


def searched_before(earlier: dict, runs: Path) -> dict:
    """Rows of an earlier results file that stay as they are: those of runs not in ``runs``, and
    those of the very runs in ``runs`` (same creation time); a run trained again (or a row that
    does not say which run it came from) is searched again."""
    labels = run_labels(runs)
    created = {lb: json.loads((d / "manifest.json").read_text())["created"] for lb, (_, d) in labels.items()}
    keep = {}
    for name, row in earlier["rows"].items():
        label = label_of(name, labels)
        if label is None or row.get("run_created") == created[label]:
            keep[name] = row
    return keep


def render(out: dict) -> None:
    """``scifact_gr.md`` from the results JSON (``--render`` redoes it alone)."""
    rows, by_lp = out["rows"], out.get("validation_ndcg_cut_10_by_length_penalty", {})
    lines = [
        "# Generative retrieval on BEIR SciFact (test, 300 queries)",
        "",
        (
            f"{out['date']}, {out['machine']}. Training: `{out['config']}` (bert2bert from all-MiniLM-L6-v2, 1 decoder "
            "layer; np/base and np/contrastive stage 2 with the encoder frozen and cached, np/async with its top "
            "layer training and CE rebuilt from it every 2 epochs), same wall-clock budget per variant, "
            "training qrels + indexing + pseudo-query "
            "examples; generative retrievers decode with beam 10 (one beam, no widening)."
        ),
        "",
        (
            "| row | variant | train min | steps | nDCG@10 | Hits@1 | Hits@10 | R@100 | MRR@10 "
            "| memorisation Hits@1 | search s | trained |"
        ),
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, row in rows.items():
        m = row["metrics"]
        steps = row.get("training", {}).get("steps", "")
        memo = row.get("memorisation_success_1")
        trained = row.get("run_created", "")[:16].replace("T", " ")
        lines.append(
            f"| {name} | {row['variant']} | {row['train_minutes']} | {steps} | {m['ndcg_cut_10']:.4f} | "
            f"{m['success_1']:.4f} | {m['success_10']:.4f} | {m['recall_100']:.4f} | "
            f"{m['recip_rank_cut_10']:.4f} | {'' if memo is None else f'{memo:.3f}'} | {row['search_seconds']} | "
            f"{trained} |"
        )
    lines += [
        "",
        (
            "Each variant trained by its own invocation with `--variants V --skip-eval` (two at a "
            "time, one torch thread each on the 2 cores); this command evaluated them. np/contrastive's "
            f"budget is split {CONTRASTIVE_SHARE:.0%} stage 1 / the rest stage 2; train min counts both "
            "stages (not the indexing between them). `np/base trained-CE`: the np/base recipe with "
            "`model.train_ce=true` (the CE table trains too, DESIGN.md's ablation; the paper keeps it frozen). "
            "`token-emb`: the variant's recipe with `model.token_embeddings=true` (CE frozen; a trained "
            "embedding per token is added to every CE row of that token, also to rows appended later)."
        ),
        "",
        (
            "`trained`: when the run finished (UTC), where the results file knows it. Runs from 2026-12-02 03:00 "
            "on flush float denormals (up to 2.3x cheaper late steps, `train_denormals.md`) and, for np/async, "
            "cache the states below the encoder's trained top layer for training examples and for the "
            "corpus the CE rebuild encodes (`train_speed.md`, `async_rebuild.md`); the runs without a date "
            "(2026-12-01/02, before that) ran without either, so their budgets bought fewer steps."
        ),
        *[line for note in out.get("notes", []) for line in ("", note)],
        "",
        "Length penalty picked on validation data (each run's held-out training queries, nDCG@10): "
        + "; ".join(f"{v}: lp0 {d['0.0']:.4f}, lp1 {d['1.0']:.4f}" for v, d in (by_lp or {}).items()),
        "",
        (
            "Rows `lp1`: length penalty 1.0 (a finished hypothesis scores sum / length); `token-trie`: "
            "the trie over token ids, a token's score the log-sum-exp over its CE rows; `group-trie`: the token "
            "trie, any CE row of an allowed token may be emitted, a document scores its best row sequence."
        ),
        "",
        f"Command: `{out['command']}`",
    ]
    (RESULTS / "scifact_gr.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=conditions.data_dir(),
        help="Holds scifact/ in BEIR layout (default $NPDECODE_DATA).",
    )
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "scifact-gr")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument(
        "--long",
        nargs=2,
        metavar=("VARIANT", "MINUTES"),
        help="Train VARIANT longer, into <run>-<MINUTES>min (a row of its own).",
    )
    parser.add_argument("--skip-eval", action="store_true")
    parser.add_argument("--render", action="store_true", help="Rewrite the .md from results/scifact_gr.json.")
    parser.add_argument(
        "--only-missing",
        action="store_true",
        help=(
            "Search only the rows missing from results/scifact_gr.json (same runs); its rows whose run is "
            "not in --runs are kept as they were."
        ),
    )
    args = parser.parse_args()
    if args.render:
        render(json.loads((RESULTS / "scifact_gr.json").read_text()))
        return
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.long:
        variant, minutes = args.long[0], float(args.long[1])
        train(variant, args.runs, args.data_dir, minutes, args.threads, tag=f"{minutes:g}min")
    else:
        for v in args.variants:
            train(v, args.runs, args.data_dir, args.minutes, args.threads)
    if args.skip_eval:
        return
    earlier = None
    previous = RESULTS / "scifact_gr.json"
    if args.only_missing and previous.is_file():
        earlier = json.loads(previous.read_text())
    done = searched_before(earlier, args.runs) if earlier else None
    metrics, seconds = evaluate_all(args.runs, args.data_dir, args.k, done)
    known = earlier.get("validation_ndcg_cut_10_by_length_penalty", {}) if earlier else {}
    by_lp = {
        label: known[label] if label in known and label in done else validation_length_penalty(d, args.data_dir)
        for label, (v, d) in run_labels(args.runs).items()
        if v.startswith("np")
    }
    print("validation nDCG@10 by length penalty:", json.dumps(by_lp), flush=True)
    write(metrics, seconds, args, by_lp, earlier)


if __name__ == "__main__":
    main()
