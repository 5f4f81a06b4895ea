"""``npdecode train``: a thin click command over :func:`npdecode.train.run.train_run`."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("train")
@click.argument("config_path", metavar="CONFIG.yml", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Run directory to create.")
@click.option("--dataset", help="Dataset name or BEIR-layout folder (overrides data.dataset).")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), help="Local dataset copies (as in eval).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a config key, e.g. optim.lr=3e-4.")
@click.option("--resume", is_flag=True, help="Continue the unfinished run in --out.")
def train_command(config_path, out, dataset, data_dir, sets, resume):
    """Train a generative retriever (vanilla or Np) and index the corpus for it.

    \b
    Example:  npdecode train configs/train-scifact-cpu.yml --out runs/scifact --dataset beir/scifact
    """
    from rich.console import Console

    from npdecode.train.config import load_train_config
    from npdecode.train.run import train_run

    config = load_train_config(
        config_path, tuple(sets), **{"data.dataset": dataset, "data.data_dir": str(data_dir) if data_dir else None}
    )
    console = Console(stderr=True)
    train_run(config, out, resume=resume, say=console.print)
    click.echo(f'{out}: search with `npdecode search {out}/index "QUERY"` (vanilla runs: --retriever genre)')
