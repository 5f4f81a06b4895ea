"""``npdecode demo``: the main job on the bundled SciFact sample, end to end.

Trains the default Np model (``train-demo.yml``: bert2bert from the packaged all-MiniLM-L6-v2,
frozen cached encoder, shallow decoder) and, with ``--vanilla``, the GENRE-style model with the
same budget; indexes the corpus; evaluates np (and vanilla) beside BM25 and dense on the 300
test queries in one table, and prints how much of the corpus each model memorised. Finished
runs are reused and unfinished ones resumed, so running the demo again is cheap.
"""

from __future__ import annotations

from pathlib import Path

import click

BUNDLED_SAMPLE = Path(__file__).resolve().parent / "data" / "scifact-sample"
DEMO_CONFIG = Path(__file__).resolve().parent / "data" / "train-demo.yml"


def _train(config_path: Path, out: Path, sets: tuple[str, ...], device: str, say) -> dict:
    """Train one demo model into ``out`` (or read the finished run there)."""
    import json

    from npdecode.train.config import load_train_config
    from npdecode.train.run import MANIFEST, train_run

    if (out / MANIFEST).is_file():
        say(f"{out}: finished run found, reusing it (delete it to train again)")
        return json.loads((out / MANIFEST).read_text())
    accelerator = {"auto": None, "cpu": "cpu"}.get(device, "gpu")
    config = load_train_config(
        config_path, sets, **{"data.dataset": str(BUNDLED_SAMPLE), "trainer.accelerator": accelerator}
    )
    return train_run(config, out, resume=out.exists(), say=say)


def _register_vanilla(index_dir: Path) -> None:
    """The vanilla run as retriever ``vanilla`` (its own index and checkpoint)."""
    from npdecode.search.registry import register_retriever

    def build(corpus_path, options):
        from npdecode.search.retrievers.generative import GenerativeRetriever

        return GenerativeRetriever(index_dir, kind="genre", options=options)

    register_retriever("vanilla", build, replace=True)  # a second demo in one process: its own run


@click.command("demo")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("out/demo"), show_default=True)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=DEMO_CONFIG,
    show_default=True,
    help="Training config of the np model (the vanilla model uses it too).",
)
@click.option(
    "--vanilla/--no-vanilla",
    default=False,
    show_default=True,
    help="Also train the vanilla GENRE-style model with the same budget.",
)
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a training config key.")
@click.option("--device", default="auto", show_default=True)
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), help="Default: OUT/cache.")
def demo_command(out, config_path, vanilla, sets, device, cache_dir):
    """Train Np (and vanilla) on the bundled SciFact sample; compare with BM25 and dense.

    \b
    Example:  npdecode demo --out out/demo --set trainer.max_minutes=2
    """
    from rich.console import Console

    from npdecode.eval.cli import evaluate_and_report

    console = Console(stderr=True)
    runs = {"np": _train(config_path, out / "np", tuple(sets), device, console.print)}
    retrievers = ["bm25", "dense", "np"]
    if vanilla:
        runs["vanilla"] = _train(
            config_path,
            out / "vanilla",
            (*sets, "model.variant=vanilla", "model.learn_scale=false", "model.train_ce=false"),
            device,
            console.print,
        )
        _register_vanilla(out / "vanilla" / "index")
        retrievers.append("vanilla")
    # every retriever returns 100 documents; the generative ones rank those past their beam of 10
    # by the scores the beam search computed (past_beam "prefix", no extra decoding)
    options = {"device": device, "cache_dir": cache_dir or out / "cache", "index": out / "np" / "index"}
    evaluate_and_report(str(BUNDLED_SAMPLE), "test", None, retrievers, options, 100,
                        out / "metrics.json", out / "run.trec", out / "curves.png")  # fmt: skip
    for name, run in runs.items():
        t = run["training"]
        click.echo(
            f"{name}: trained {t['steps']} steps ({t['seconds'] / 60:.1f} min, {t['examples_per_second']} "
            f"examples/s); memorisation Hits@1 on indexing examples "
            f"{run['metrics']['memorisation_success_1']:.3f}"
        )
