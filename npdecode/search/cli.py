"""``npdecode search``: decode queries over an index dir with its generative model."""

from __future__ import annotations

from pathlib import Path

import click

from npdecode.deprecation import deprecated_alias
from npdecode.errors import NpdecodeError

# decoding flags that `npdecode search` and `npdecode eval` share (one text each)
memory_weight_option = click.option(
    "--memory-weight",
    type=float,
    help="np: weight of the CE memory's lookahead (0: plain Np decoding; default: the checkpoint's setting).",
)
past_beam_option = click.option(
    "--past-beam",
    type=click.Choice(["prefix", "widen", "none"]),
    help="np / genre, k above the beam: rank the documents past the beam by their longest scored identifier "
    "prefix (prefix, default: no extra decoding), decode again with wider beams (widen: exact, 10-90x slower "
    "at k=100-1000), or return the beam's only (none).",
)


@click.command("search")
@click.argument("index_dir", type=click.Path(path_type=Path))
@click.argument("query", required=False)
@click.option("--queries", "queries_path", type=click.Path(path_type=Path), help="Queries file (.jsonl or .tsv).")
@click.option("--run", "run_path", type=click.Path(path_type=Path), help="Write a TREC run here.")
@click.option("-k", "--top-k", "top_k", default=10, show_default=True, help="Documents per query.")
@click.option("--k", "old_k", type=int, hidden=True, help="Deprecated spelling of --top-k.")
@click.option("--beam", type=int, help="Beam size (default 10).")
@click.option("--retriever", "kind", type=click.Choice(["np", "genre"]), default="np", show_default=True)
@click.option(
    "--trie-mode",
    type=click.Choice(["ce", "token", "group"]),
    help="Np decoding over CE ids, token ids (log-sum-exp over rows) or token groups (best row).",
)
@click.option("--gr-model", help="Decode with this checkpoint instead of the one the index records.")
@click.option("--model", "old_model", hidden=True, help="Deprecated spelling of --gr-model.")
@click.option("--batch-size", type=int, help="Queries decoded together (default: ~320 beam rows per step).")
@click.option("--device", help="auto (default), cpu or cuda[:n].")
@click.option(
    "--normalizer", help="exact (default), or ivf[:NPROBE[:TOPK[:NLIST]]]: approximate (FAISS top-k) normalizer, CPU."
)
@click.option(
    "--dtype",
    type=click.Choice(["fp32", "bf16", "auto"]),
    help="Decode in this precision (auto: bf16 where the device has native bf16; default: as loaded).",
)
@click.option(
    "--length-penalty",
    type=float,
    help="Finished hypotheses score sum / length**L, as HF's beam scorer (default 1, the paper's; 0: the raw sum).",
)
@memory_weight_option
@past_beam_option
@click.option(
    "--verify",
    is_flag=True,
    help="Check every index and checkpoint file's digest before loading (sizes are always checked).",
)
def search_command(
    index_dir,
    query,
    queries_path,
    run_path,
    top_k,
    old_k,
    beam,
    kind,
    trie_mode,
    gr_model,
    old_model,
    batch_size,
    device,
    normalizer,
    dtype,
    length_penalty,
    memory_weight,
    past_beam,
    verify,
):
    """Search INDEX_DIR for QUERY (or every query of --queries, written to --run).

    \b
    Example:  npdecode search runs/scifact/index "vitamin D deficiency increases fracture risk" -k 5
    """
    from npdecode.search.options import SearchOptions
    from npdecode.search.retrievers.generative import GenerativeRetriever

    k = deprecated_alias("--k", "-k/--top-k", old_k, top_k)
    gr_model = deprecated_alias("--model", "--gr-model", old_model, gr_model)
    if (query is None) == (queries_path is None):
        raise NpdecodeError("give either a QUERY or --queries FILE")
    if k < 1:
        raise NpdecodeError(f"-k {k}: must be at least 1")
    options = SearchOptions.of(
        beam=beam,
        trie_mode=trie_mode,
        gr_model=gr_model,
        batch_size=batch_size,
        device=device,
        normalizer=normalizer,
        length_penalty=length_penalty,
        dtype=dtype,
        memory_weight=memory_weight,
        past_beam=past_beam,
        verify=verify or None,
    )
    if queries_path is not None:
        from npdecode.topics import load_queries

        queries = load_queries(queries_path)
    else:
        queries = {"query": query}
    retriever = GenerativeRetriever(index_dir, kind=kind, options=options)
    run = retriever.search(queries, k)
    note = retriever.past_beam_note(k)
    if note:
        click.echo(f"{kind}: {note}", err=True)
    if run_path is not None:
        from npdecode.runs import write_run

        write_run(run, run_path, tag=f"npdecode-{kind}")
        click.echo(f"{run_path}: {len(run)} queries")
        return
    identifiers = {
        d: g.identifier for i, g in enumerate(retriever.index.groups) for d in retriever.index.live_doc_ids(i)
    }
    for docs in run.values():
        for rank, (doc_id, score) in enumerate(sorted(docs.items(), key=lambda kv: (-kv[1], kv[0])), 1):
            click.echo(f"{rank}\t{doc_id}\t{score:.4f}\t{identifiers[doc_id]}")
