"""Reports of an :class:`~npdecode.eval.experiment.Experiment`: terminal table, JSON, curves."""

from __future__ import annotations

import datetime as _dt
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from npdecode import __version__
from npdecode.eval.experiment import Experiment

# Shown in the terminal table after the dataset's primary metrics (the JSON has all of them).
TABLE_METRICS = ("ndcg_cut_10", "recall_100", "recip_rank_cut_10", "success_1", "success_10", "map_cut_100", "Rprec")
LABELS = {
    "ndcg_cut": "nDCG@{}",
    "recall": "R@{}",
    "success": "Hits@{}",
    "recip_rank_cut": "MRR@{}",
    "map_cut": "MAP@{}",
}
# One summary table per metric over several datasets (BEIR's: nDCG@10 and Recall@100).
SUMMARY_METRICS = ("ndcg_cut_10", "recall_100")
CURVE_CUTOFFS = (1, 3, 5, 10, 20, 50, 100, 200, 500, 1000)
ALPHA = 0.05


def label(metric: str) -> str:
    """``ndcg_cut_10`` -> ``nDCG@10``; names without a cutoff are returned as they are."""
    head, _, cut = metric.rpartition("_")
    if cut.isdigit() and head in LABELS:
        return LABELS[head].format(cut)
    return {"recip_rank": "MRR", "Rprec": "R-prec"}.get(metric, metric)


def table_metrics(experiment: Experiment) -> list[str]:
    available = experiment.results[0].evaluation.mean
    ordered = [*experiment.dataset.primary, *TABLE_METRICS]
    return [m for i, m in enumerate(ordered) if m in available and m not in ordered[:i]]


def print_table(experiment: Experiment, console=None) -> None:
    """Rich table: one row per retriever; ``†`` marks p < 0.05 against the first row."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    ds = experiment.dataset
    metrics = table_metrics(experiment)
    table = Table(title=f"{ds.title} ({ds.split}, {experiment.results[0].evaluation.num_queries} judged queries)")
    table.add_column("retriever")
    for m in metrics:
        table.add_column(label(m), justify="right")
    table.add_column("time (s)", justify="right")
    for result in experiment.results:
        cells = []
        for m in metrics:
            mark = "†" if result.pvalues.get(m, 1.0) < ALPHA else ""
            cells.append(f"{result.evaluation.mean[m]:.4f}{mark}")
        table.add_row(result.name, *cells, f"{result.seconds:.1f}")
    console.print(table)
    if len(experiment.results) > 1:
        console.print(f"† paired t-test against {experiment.results[0].name}, p < {ALPHA}")
    for note in ds.notes:
        console.print(f"[yellow]note:[/yellow] {note}")


def to_json(experiment: Experiment, per_query: bool = True) -> dict[str, Any]:
    """The report as plain data; metric keys as pytrec_eval names them."""
    ds = experiment.dataset
    out: dict[str, Any] = {
        "dataset": ds.name,
        "split": ds.split,
        "num_queries": experiment.results[0].evaluation.num_queries,
        "k": experiment.k,
        "reference": experiment.results[0].name,
        "retrievers": {},
        "notes": list(ds.notes),
        "npdecode_version": __version__,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
    }
    for result in experiment.results:
        entry: dict[str, Any] = {"metrics": result.evaluation.mean, "seconds": round(result.seconds, 3)}
        if result.pvalues:
            entry["pvalues_vs_reference"] = result.pvalues
        if result.evaluation.removed_identical:
            entry["removed_identical_ids"] = result.evaluation.removed_identical
        if per_query:
            entry["per_query"] = result.evaluation.per_query
        out["retrievers"][result.name] = entry
    return out


def average(experiments: Sequence[Experiment]) -> dict[str, dict[str, float]]:
    """``{retriever: {metric: mean over the datasets}}``, for the metrics every dataset has."""
    out: dict[str, dict[str, float]] = {}
    for name in [r.name for r in experiments[0].results]:
        means = [next(r for r in e.results if r.name == name).evaluation.mean for e in experiments]
        common = [m for m in means[0] if all(m in mean for mean in means)]
        out[name] = {m: sum(mean[m] for mean in means) / len(means) for m in common}
    return out


def print_summary(experiments: Sequence[Experiment], labels: dict[str, str], console=None) -> None:
    """BEIR-style tables, one per metric of :data:`SUMMARY_METRICS`: a row per retriever, a column
    per dataset (``labels``: dataset name -> column title) and their average."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    avg = average(experiments)
    for metric in SUMMARY_METRICS:
        if not all(metric in values for values in avg.values()):
            continue
        table = Table(title=f"{label(metric)} ({experiments[0].dataset.split})")
        table.add_column("retriever")
        for e in experiments:
            table.add_column(labels.get(e.dataset.name, e.dataset.name), justify="right")
        table.add_column("avg", justify="right")
        for name, values in avg.items():
            cells = [f"{next(r for r in e.results if r.name == name).evaluation.mean[metric]:.4f}" for e in experiments]
            table.add_row(name, *cells, f"{values[metric]:.4f}")
        console.print(table)


def to_json_many(experiments: Sequence[Experiment], per_query: bool = True) -> dict[str, Any]:
    """The report of several datasets: ``{"datasets": {name: to_json(...)}, "average":
    {retriever: {metric: mean over the datasets}}}`` plus the split, k and version."""
    return {
        "datasets": {e.dataset.name: to_json(e, per_query=per_query) for e in experiments},
        "average": average(experiments),
        "split": experiments[0].dataset.split,
        "k": experiments[0].k,
        "npdecode_version": __version__,
    }


def curves(experiment: Experiment, cutoffs=CURVE_CUTOFFS) -> dict[str, dict[str, list[float]]]:
    """``{retriever: {"recall": [...], "ndcg": [...]}}`` at ``cutoffs`` (pytrec_eval)."""
    from npdecode.eval.metrics import evaluate

    cuts = ",".join(str(c) for c in cutoffs)
    out = {}
    for result in experiment.results:
        ev = evaluate(
            experiment.dataset.qrels.judgments,
            result.run,
            queries=experiment.dataset.queries,
            measures=(f"recall.{cuts}", f"ndcg_cut.{cuts}"),
            mrr_cutoffs=(),
            ignore_identical_ids=experiment.dataset.ignore_identical_ids,
        )
        out[result.name] = {
            "recall": [ev.mean[f"recall_{c}"] for c in cutoffs],
            "ndcg": [ev.mean[f"ndcg_cut_{c}"] for c in cutoffs],
        }
    return out


def plot_curves(experiment: Experiment, path: str | Path, cutoffs=CURVE_CUTOFFS) -> None:
    """Recall@k and nDCG@k against k (log axis) for every retriever, saved as an image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from npdecode.atomic import atomic_file

    data = curves(experiment, cutoffs)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for ax, key, title in ((axes[0], "recall", "Recall@k"), (axes[1], "ndcg", "nDCG@k")):
        for name, values in data.items():
            ax.plot(cutoffs, values[key], marker="o", label=name)
        ax.set_xscale("log")
        ax.set_xlabel("k")
        ax.set_title(title)
        ax.set_ylim(0, 1)
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle(f"{experiment.dataset.title} ({experiment.dataset.split})")
    suffix = Path(path).suffix.lstrip(".") or "png"
    with atomic_file(path, "wb") as fh:
        fig.savefig(fh, format=suffix, dpi=120)
    plt.close(fig)
