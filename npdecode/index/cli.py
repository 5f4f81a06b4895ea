"""``npdecode index``: a thin click command over the index package."""

from __future__ import annotations

from pathlib import Path

import click

from npdecode.deprecation import deprecated_alias
from npdecode.errors import NpdecodeError


@click.command("index")
@click.argument("corpus", type=click.Path(path_type=Path))
@click.option("--model", help="Backbone or checkpoint whose encoder makes the CE (hub id or path).")
@click.option("--out", type=click.Path(path_type=Path), help="Index directory to create.")
@click.option("--append", "append_to", type=click.Path(path_type=Path), help="Add CORPUS to this index.")
@click.option("--replace", is_flag=True, help="With --append: replace documents whose id is indexed.")
@click.option(
    "--config", "config_path", type=click.Path(path_type=Path), help="YAML index settings (configs/index-*.yml)."
)
@click.option("--centroids", type=int, help="CE rows per token: k-means centroids (0: no clustering). Default 5.")
@click.option("--k", "old_k", type=int, hidden=True, help="Deprecated spelling of --centroids.")
@click.option("--raw-ce", is_flag=True, default=None, help="Also keep the raw CE vectors and a store over them.")
@click.option("--factory", help="FAISS index_factory string of the CE store. Default Flat.")
@click.option("--devices", type=int, help="Processes / GPUs per node (encoding; clustering too).")
@click.option("--num-nodes", type=int, help="Nodes (each runs this command; encoding and clustering split over all).")
@click.option("--accelerator", help="Lightning accelerator: auto, cpu, gpu.")
@click.option(
    "--trie-mode", type=click.Choice(["ce", "token", "group"]), help="Trie mode `npdecode search` decodes with."
)
@click.option(
    "--precision",
    type=click.Choice(["auto", "32", "bf16"]),
    help="CE precision (auto: bf16 on a CUDA GPU with bf16, fp32 elsewhere).",
)
@click.option(
    "--allow-mixed-precision",
    is_flag=True,
    help="With --append: allow CE in another precision than the index's segments.",
)
def index_command(
    corpus,
    model,
    out,
    append_to,
    replace,
    config_path,
    centroids,
    old_k,
    raw_ce,
    factory,
    devices,
    num_nodes,
    accelerator,
    trie_mode,
    precision,
    allow_mixed_precision,
):
    """Build an index dir from CORPUS (or add CORPUS to one with --append).

    \b
    Example:  npdecode index corpus.jsonl --model google/flan-t5-base --out idx/
    Append:   npdecode index new-docs.jsonl --append idx/
    """
    k = deprecated_alias("--k", "--centroids", old_k, centroids)
    runtime = {"devices": devices, "num_nodes": num_nodes, "accelerator": accelerator, "precision": precision}
    if append_to is not None:
        if out is not None or model is not None or config_path is not None:
            raise NpdecodeError("--append uses the index's model and settings; drop --out, --model and --config")
        from npdecode.index.appender import append_to_index

        settings = {"k": k, "raw_ce": raw_ce, "factory": factory, "trie_mode": trie_mode, **runtime}
        manifest = append_to_index(
            corpus, append_to, replace=replace, runtime=settings, allow_mixed_precision=allow_mixed_precision
        )
        click.echo(
            f"{append_to}: {manifest.counts.documents} documents, "
            f"{manifest.counts.ce_rows} CE rows (segment {manifest.segments[-1].name})"
        )
        return
    if replace or allow_mixed_precision:
        raise NpdecodeError("--replace and --allow-mixed-precision only apply with --append INDEX_DIR")
    if model is None or out is None:
        raise NpdecodeError("building an index needs --model MODEL and --out INDEX_DIR")
    from npdecode.index.builder import build_index
    from npdecode.index.config import load_index_config
    from npdecode.index.manifest import read_manifest

    config = load_index_config(config_path, k=k, raw_ce=raw_ce, factory=factory, trie_mode=trie_mode, **runtime)
    build_index(corpus, model, out, config)
    counts = read_manifest(out).counts
    click.echo(f"{out}: {counts.documents} documents, {counts.identifiers} identifiers, {counts.ce_rows} CE rows")
