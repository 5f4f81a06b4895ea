"""``npdecode merge RECIPE OUT``: a thin click command over :func:`npdecode.merge.api.merge_models`."""

from __future__ import annotations

import re

import click

from npdecode.errors import NpdecodeError

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_size(text: str) -> int:
    """``"500M"`` -> 524288000 bytes; plain integers are bytes; K/M/G/T are powers of 1024."""
    match = _SIZE.match(str(text))
    if match is None or float(match[1]) <= 0:
        raise NpdecodeError(f"--out-shard-size {text!r}: expected a positive size such as 2G, 500M or 1000000")
    return int(float(match[1]) * _UNITS[match[2].upper()])


def _return_large_frees_to_os() -> None:
    """Ask glibc to serve every allocation of 1 MiB or more with its own mmap.

    By default glibc keeps freed blocks up to 32 MiB in its heaps for reuse, so a merge that
    frees each tensor after writing it would still look as big as its largest burst of
    layer-sized tensors. Only the CLI process does this; the library never changes the
    allocator of a host program.
    """
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):  # not glibc
        pass


@click.command("merge")
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--device", default="auto", show_default=True, help="auto (CUDA when available), cpu or cuda[:n].")
@click.option("--out-shard-size", default="5G", show_default=True, help="Max bytes per shard (K/M/G suffixes).")
@click.option("--dtype", default=None, help="Computation dtype (overrides the recipe's 'dtype').")
@click.option("--random-seed", type=int, default=None, help="Seed for random methods (DARE, DELLA).")
@click.option("--copy-tokenizer/--no-copy-tokenizer", default=True, show_default=True)
@click.option("--allow-crimes", is_flag=True, help="Allow merging models of different architectures.")
@click.option("--trust-remote-code", is_flag=True, help="Allow tokenizers with custom code.")
@click.option("-j", "--threads", type=click.IntRange(min=1), default=1, show_default=True, help="Worker threads.")
@click.option("--dry-run", "--check", "dry_run", is_flag=True, help="Validate recipe and inputs; write nothing.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bar per tensor.")
def merge_command(recipe: str, out: str, out_shard_size: str, dry_run: bool, overwrite: bool, **options) -> None:
    """Merge checkpoints as described by the MergeKit-style YAML RECIPE into directory OUT.

    \b
    Example:  npdecode merge configs/merge-ties-t5.yml out/t5-ties --random-seed 0
    """
    from npdecode.merge.api import merge_models

    _return_large_frees_to_os()
    report = merge_models(
        recipe, out, dry_run=dry_run, overwrite=overwrite, out_shard_size=parse_size(out_shard_size), **options
    )
    for warning in report.warnings if dry_run else ():
        click.echo(f"warning: {warning}", err=True)
    size = f"{report.bytes / 1024**2:.1f} MiB"
    if dry_run:
        click.echo(f"ok: {report.tensors} tensors, {size} in {report.shards} shard(s); nothing written")
    else:
        click.echo(f"wrote {report.out}: {report.tensors} tensors, {size} in {report.shards} shard(s)")
