"""``npdecode index`` and ``npdecode search``: thin click commands over the index package."""

from __future__ import annotations

from pathlib import Path

import click

from npdecode.errors import NpdecodeError


@click.command("index")
@click.argument("corpus", type=click.Path(path_type=Path))
@click.option("--model", help="Backbone or checkpoint whose encoder makes the CE (hub id or path).")
@click.option("--out", type=click.Path(path_type=Path), help="Index directory to create.")
@click.option("--append", "append_to", type=click.Path(path_type=Path), help="Add CORPUS to this index.")
@click.option("--replace", is_flag=True, help="With --append: replace documents whose id is indexed.")
@click.option("--config", "config_path", type=click.Path(path_type=Path), help="YAML index settings (configs/index-*.yml).")
@click.option("--k", type=int, help="Centroids per token (0: no clustering). Default 5.")
@click.option("--raw-ce", is_flag=True, default=None, help="Also keep the raw CE vectors and a store over them.")
@click.option("--factory", help="FAISS index_factory string of the CE store. Default Flat.")
@click.option("--devices", type=int, help="Processes / GPUs per node for encoding.")
@click.option("--num-nodes", type=int, help="Nodes for encoding (each runs this command).")
@click.option("--accelerator", help="Lightning accelerator: auto, cpu, gpu.")
@click.option("--trie-mode", type=click.Choice(["ce", "token", "group"]), help="Trie mode `npdecode search` decodes with.")
@click.option("--precision", type=click.Choice(["auto", "32", "bf16"]),
              help="CE precision (auto: bf16 on a CUDA GPU with bf16, fp32 elsewhere).")
@click.option("--allow-mixed-precision", is_flag=True,
              help="With --append: allow CE in another precision than the index's segments.")
def index_command(corpus, model, out, append_to, replace, config_path, k, raw_ce, factory, devices, num_nodes,
                  accelerator, trie_mode, precision, allow_mixed_precision):
    """Build an index dir from CORPUS (or add CORPUS to one with --append)."""
    runtime = {"devices": devices, "num_nodes": num_nodes, "accelerator": accelerator, "precision": precision}
    if append_to is not None:
        if out is not None or model is not None or config_path is not None:
            raise NpdecodeError("--append uses the index's model and settings; drop --out, --model and --config")
        from npdecode.index.appender import append_to_index

        settings = {"k": k, "raw_ce": raw_ce, "factory": factory, "trie_mode": trie_mode, **runtime}
        manifest = append_to_index(corpus, append_to, replace=replace, runtime=settings,
                                   allow_mixed_precision=allow_mixed_precision)
        click.echo(f"{append_to}: {manifest['counts']['documents']} documents, "
                   f"{manifest['counts']['ce_rows']} CE rows (segment {manifest['segments'][-1]['name']})")
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
    counts = read_manifest(out)["counts"]
    click.echo(f"{out}: {counts['documents']} documents, {counts['identifiers']} identifiers, "
               f"{counts['ce_rows']} CE rows")


@click.command("search")
@click.argument("index_dir", type=click.Path(path_type=Path))
@click.argument("query", required=False)
@click.option("--queries", "queries_path", type=click.Path(path_type=Path), help="Queries file (.jsonl or .tsv).")
@click.option("--run", "run_path", type=click.Path(path_type=Path), help="Write a TREC run here.")
@click.option("-k", "--k", default=10, show_default=True, help="Documents per query.")
@click.option("--beam", default=10, show_default=True, help="Beam size.")
@click.option("--retriever", "kind", type=click.Choice(["np", "genre"]), default="np", show_default=True)
@click.option("--trie-mode", type=click.Choice(["ce", "token", "group"]),
              help="Np decoding over CE ids, token ids (log-sum-exp over rows) or token groups (best row).")
@click.option("--model", help="Decode with this checkpoint instead of the index's model.")
@click.option("--batch-size", type=int, help="Queries decoded together (default: ~320 beam rows per step).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:n].")
@click.option("--normalizer", default="exact", show_default=True,
              help="exact, or ivf[:NPROBE[:TOPK[:NLIST]]]: approximate (FAISS top-k) normalizer, CPU.")
@click.option("--length-penalty", default=0.0, show_default=True, type=float,
              help="Finished hypotheses score sum / length**L, as HF's beam scorer (0: the raw sum).")
def search_command(index_dir, query, queries_path, run_path, k, beam, kind, trie_mode, model, batch_size, device,
                   normalizer, length_penalty):
    """Search INDEX_DIR for QUERY (or every query of --queries, written to --run)."""
    from npdecode.device import resolve_device
    from npdecode.index.retriever import GenerativeRetriever

    if (query is None) == (queries_path is None):
        raise NpdecodeError("give either a QUERY or --queries FILE")
    if k < 1 or beam < 1:
        raise NpdecodeError(f"-k {k} / --beam {beam}: both must be at least 1")
    if queries_path is not None:
        from npdecode.eval.topics import load_queries

        queries = load_queries(queries_path)
    else:
        queries = {"query": query}
    retriever = GenerativeRetriever(index_dir, kind=kind, model=model, device=resolve_device(device), beam=beam,
                                    batch_size=batch_size, trie_mode=trie_mode, normalizer=normalizer,
                                    length_penalty=length_penalty)
    run = retriever.search(queries, k)
    if run_path is not None:
        from npdecode.eval.runs import write_run

        write_run(run, run_path, tag=f"npdecode-{kind}")
        click.echo(f"{run_path}: {len(run)} queries")
        return
    identifiers = {d: g.identifier for i, g in enumerate(retriever.index.groups)
                   for d in retriever.index.live_doc_ids(i)}
    for docs in run.values():
        for rank, (doc_id, score) in enumerate(sorted(docs.items(), key=lambda kv: (-kv[1], kv[0])), 1):
            click.echo(f"{rank}\t{doc_id}\t{score:.4f}\t{identifiers[doc_id]}")
