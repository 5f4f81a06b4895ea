"""``npdecode eval``: datasets, retrievers, metrics and the report in one command."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import click

from npdecode.deprecation import deprecated_alias
from npdecode.errors import NpdecodeError
from npdecode.search.cli import memory_weight_option, past_beam_option


def _run_paths(run: Path | None, names: list[str]) -> dict[str, Path]:
    """One retriever writes ``run`` itself; several write ``run`` with the name before the suffix."""
    if run is None:
        return {}
    if len(names) == 1:
        return {names[0]: run}
    return {n: run.with_name(f"{run.stem}.{n}{run.suffix or '.trec'}") for n in names}


def dataset_labels(names: list[str]) -> dict[str, str]:
    """Short column titles: ``beir/scifact`` -> ``scifact``, a folder -> its name; the full
    names where two short ones would be the same."""
    short = {n: Path(n).name if Path(n).is_dir() else n.removeprefix("beir/") for n in names}
    return short if len(set(short.values())) == len(short) else {n: n for n in names}


def _suffixed(path: Path, *parts: str, default: str) -> Path:
    """``DIR/name.suf`` -> ``DIR/name.part1.part2.suf`` (``/`` in a part becomes ``-``)."""
    middle = ".".join(p.replace("/", "-").replace("\\", "-") for p in parts)
    return path.with_name(f"{path.stem}.{middle}{path.suffix or default}")


def evaluate_and_report(
    dataset: str | Sequence[str],
    split: str,
    data_dir: Path | None,
    retrievers: list[str],
    options,
    k: int,
    json_path: Path | None,
    run_path: Path | None,
    plot_path: Path | None,
    ignore_identical_ids: bool | None = None,
    per_query: bool = True,
) -> dict:
    """Load, retrieve, evaluate, print the table and write the requested files; ``options``
    is a :class:`~npdecode.search.options.SearchOptions` or a mapping of its fields.

    Several datasets: one table per dataset, then one BEIR-style table per summary metric
    (datasets as columns, their average last); the JSON is ``{"datasets": {name: report},
    "average": {retriever: {metric: mean}}}``, and runs / plots get ``.<dataset>[.<retriever>]``
    before their suffix. With ``--gr-model`` and no ``--index``, np / genre decode over each
    corpus's index built with that checkpoint (cached, :mod:`npdecode.eval.zero_shot`)."""
    from rich.console import Console

    from npdecode.cache import cache_root
    from npdecode.eval.datasets import load_dataset
    from npdecode.eval.report import plot_curves, print_summary, print_table, to_json, to_json_many
    from npdecode.eval.zero_shot import check_retrievers, evaluate_datasets
    from npdecode.runs import write_metrics, write_run
    from npdecode.search.options import SearchOptions

    names = [dataset] if isinstance(dataset, str) else list(dataset)
    options = SearchOptions.of(options)  # unknown or bad options fail before any work
    check_retrievers(retrievers, "--retriever")  # unknown or repeated names fail before any work
    if len(set(names)) != len(names):
        raise NpdecodeError(f"--dataset given twice: {', '.join(names)}")
    console = Console(stderr=True)
    datasets = []
    for name in names:  # every dataset loads (or fails) before any retrieval
        ds = load_dataset(name, split=split, data_dir=data_dir, cache=cache_root(options.cache_dir))
        console.print(f"[bold]{ds.name}[/bold] {ds.split}: {len(ds.queries)} queries, corpus {ds.corpus_path}")
        datasets.append(ds)
    if len({ds.name for ds in datasets}) != len(datasets):
        raise NpdecodeError(f"--dataset: two of {', '.join(names)} are the same dataset")
    labels = dataset_labels([ds.name for ds in datasets])
    out = Console() if Console().is_terminal else Console(width=150)
    experiments = evaluate_datasets(
        datasets,
        retrievers,
        options,
        k=k,
        ignore_identical_ids=ignore_identical_ids,
        labels=labels,
        progress=console.print,
        on_experiment=lambda experiment: print_table(experiment, out),
    )
    if len(experiments) == 1:
        experiment = experiments[0]
        report = to_json(experiment, per_query=per_query)
        runs = [(experiment, n, p) for n, p in _run_paths(run_path, retrievers).items()]
        plots = [(experiment, plot_path)] if plot_path is not None else []
    else:
        print_summary(experiments, labels, out)
        report = to_json_many(experiments, per_query=per_query)
        runs, plots = [], []
        for e in experiments:
            label = labels[e.dataset.name]
            if run_path is not None:
                runs += [(e, n, _suffixed(run_path, label, n, default=".trec")) for n in retrievers]
            if plot_path is not None:
                plots.append((e, _suffixed(plot_path, label, default=".png")))
    for experiment, name, path in runs:
        result = next(r for r in experiment.results if r.name == name)
        write_run(result.run, path, tag=name)
        console.print(f"run written to {path}")
    if json_path is not None:
        write_metrics(report, json_path)
        console.print(f"metrics written to {json_path}")
    for experiment, path in plots:
        plot_curves(experiment, path)
        console.print(f"curves written to {path}")
    return report


@click.command("eval")
@click.option(
    "--dataset",
    "-d",
    "datasets",
    multiple=True,
    required=True,
    help="beir/<name>, nq, nq320k, or a BEIR-layout folder; repeat for one table over several datasets.",
)
@click.option("--split", default="test", show_default=True, type=click.Choice(["test", "dev", "train"]))
@click.option(
    "--data-dir", type=click.Path(file_okay=False, path_type=Path), help="Local copies: DIR/<name>/ in BEIR layout."
)
@click.option("--retriever", "-r", "retrievers", multiple=True, default=("bm25",), show_default=True,
              help="Repeat to compare; the first is the reference of the significance tests.")  # fmt: skip
@click.option("-k", "--top-k", "top_k", default=1000, show_default=True, help="Documents retrieved per query.")
@click.option("--k", "old_k", type=int, hidden=True, help="Deprecated spelling of --top-k.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Write metrics JSON here.")
@click.option("--run", "run_path", type=click.Path(dir_okay=False, path_type=Path), help="Write the TREC run here.")
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Recall@k / nDCG@k curves (png, pdf, svg).",
)
@click.option("--dense-model", help="Encoder of the dense retriever (hub id or path); default all-MiniLM-L6-v2.")
@click.option("--model", "old_model", hidden=True, help="Deprecated spelling of --dense-model.")
@click.option(
    "--index", "index_dir", type=click.Path(path_type=Path), help="Index directory of the np / genre retrievers."
)
@click.option(
    "--gr-model",
    help="Checkpoint of the np / genre retrievers (default: the one the index records); without --index, "
    "each dataset's corpus is indexed with it (cached in --cache-dir).",
)
@click.option("--beam", type=int, help="Beam size of the np / genre retrievers (default 10).")
@click.option("--normalizer", help="np retriever: exact (default) or ivf[:NPROBE[:TOPK[:NLIST]]] (approximate, CPU).")
@click.option(
    "--length-penalty",
    type=float,
    help="np / genre: score sum / length**L as HF's beam scorer (default 1; 0: the raw sum).",
)
@memory_weight_option
@past_beam_option
@click.option("--device", help="auto (default), cpu or cuda[:n].")
@click.option(
    "--dtype", type=click.Choice(["fp32", "bf16", "auto"]), help="np / genre: decoding precision (default: as loaded)."
)
@click.option("--batch-size", type=int, help="Encoding / decoding batch size.")
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Downloads, baseline indexes and --gr-model indexes (default ~/.cache/npdecode).",
)
@click.option(
    "--ignore-identical-ids/--keep-identical-ids",
    default=None,
    help="Drop a retrieved document whose id equals the query id (default: on for BEIR, as BEIR).",
)
@click.option("--per-query/--no-per-query", default=True, show_default=True, help="Keep per-query values in the JSON.")
def eval_command(
    datasets, split, data_dir, retrievers, top_k, old_k, json_path, run_path, plot_path, dense_model, old_model,
    index_dir, gr_model, beam, normalizer, length_penalty, memory_weight, past_beam, device, dtype, batch_size,
    cache_dir, ignore_identical_ids, per_query,
):  # fmt: skip
    """Evaluate retrievers on one or more datasets and print a comparison table.

    \b
    Example:  npdecode eval -d beir/scifact -r bm25 -r dense -r np --index runs/scifact/index --json m.json
    Zero-shot over several datasets (each corpus indexed with the checkpoint, cached):
      npdecode eval -d beir/scifact -d beir/nfcorpus -r bm25 -r np --gr-model RUN/checkpoint
    """
    k = deprecated_alias("--k", "-k/--top-k", old_k, top_k)
    model = deprecated_alias("--model", "--dense-model", old_model, dense_model)
    if k < 1:
        raise NpdecodeError(f"-k {k}: must be at least 1")
    options = {"model": model, "index": index_dir, "gr_model": gr_model, "beam": beam, "device": device,
               "batch_size": batch_size, "cache_dir": cache_dir, "normalizer": normalizer,
               "length_penalty": length_penalty, "dtype": dtype, "memory_weight": memory_weight,
               "past_beam": past_beam}  # fmt: skip
    evaluate_and_report(list(datasets), split, data_dir, list(retrievers), options, k, json_path, run_path, plot_path,
                        ignore_identical_ids, per_query)  # fmt: skip
