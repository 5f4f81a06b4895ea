"""The ``npdecode`` command line: a thin click group over the stage packages.

Sub-commands are imported lazily (``"module:attribute"``), so ``npdecode --help`` stays fast
and a stage's heavy imports (torch, transformers, faiss) happen only when it runs. Every
``NpdecodeError`` becomes one line on stderr and exit status 2: a user mistake never
prints a traceback.
"""

from __future__ import annotations

import importlib
import sys

import click

from npdecode import __version__
from npdecode.errors import NpdecodeError

# name -> (module:attribute of a click.Command, one-line help shown by --help)
_COMMANDS: dict[str, tuple[str, str]] = {
    "eval": ("npdecode.eval.cli:eval_command", "Evaluate retrievers on a dataset (BEIR, NQ, NQ320k, local)."),
    "demo": (
        "npdecode.demo:demo_command",
        "Train Np on the bundled SciFact sample and compare it with BM25 and dense.",
    ),
    "index": (
        "npdecode.index.cli:index_command",
        "Build an index dir (CE table, FAISS store, trie) from a corpus, or append to one.",
    ),
    "search": (
        "npdecode.search.cli:search_command",
        "Search an index dir with its generative model (Np or GENRE-style).",
    ),
    "serve": (
        "npdecode.serve.cli:serve_command",
        "Serve an index dir over HTTP: batched search, live document appends, metrics.",
    ),
    "merge": ("npdecode.merge.cli:merge_command", "Merge checkpoints from a MergeKit-style YAML recipe."),
    "train": ("npdecode.train.cli:train_command", "Train a generative retriever (vanilla or Np) with Lightning."),
    "verify": ("npdecode.index.verify:verify_command", "Check an artifact dir's files against their recorded digests."),
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in _COMMANDS:
            return None
        target, _ = _COMMANDS[name]
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, _COMMANDS[name][1]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="npdecode")
def cli() -> None:
    """npdecode: generative retrieval with Nonparametric Decoding."""


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script and ``python -m npdecode``."""
    try:
        code = cli.main(args=argv, prog_name="npdecode", standalone_mode=False)
        if type(code) is int and code:  # a command's ctx.exit(n) / Exit(n): click returns n here
            sys.exit(code)
    except NpdecodeError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except click.exceptions.Exit as err:
        sys.exit(err.exit_code)
