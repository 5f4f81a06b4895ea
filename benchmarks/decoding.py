"""Constrained decoding speed: our CSR beam search vs HF ``generate`` + ``prefix_allowed_tokens_fn``.

Same random t5-small-size Np model (decoder embeddings and lm_head = a synthetic CE table), same
queries, same beam, CE-id trie (ours) vs a nested-dict trie walked in a Python callback (HF).
Reports queries/s, top-10 agreement with HF's lists, and a FLOP floor for the steps we run
(CE logits + decoder layers) from a plain matmul rate measured in the same run.

Usage: PYTHONPATH=. .venv/bin/python benchmarks/decoding.py --docs 100000 --ce-rows 160000 \
          --queries 16 --threads 1 --repeats 3 [--dtypes fp32 bf16] [--force-bf16] [--device cpu]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import conditions  # benchmarks/conditions.py: the script's own folder is on sys.path
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# the HF side's nested-dict trie, shared with the HF comparison tests
from tests.core.helpers import dict_trie


def synthetic_index(n_docs: int, n_rows: int, vocab: int, seed: int = 0):
    """CE rows -> tokens (row 0 start, row 1 EOS) and one CE-id path (+ EOS) per document."""
    rng = np.random.default_rng(seed)
    token_ids = np.concatenate([[0, 1], rng.integers(2, vocab, n_rows - 2)])
    paths = set()
    while len(paths) < n_docs:
        length = int(rng.integers(3, 9))
        paths.add(tuple(rng.integers(2, n_rows, length).tolist()) + (1,))
    return torch.as_tensor(token_ids), [list(p) for p in sorted(paths)]


def build_model(tmp: Path, n_rows: int, token_ids: torch.Tensor, seed: int = 0):
    from transformers import T5Config, T5ForConditionalGeneration

    from npdecode.backbone import load_backbone
    from npdecode.model import NpModel
    from tests.tiny_models import save_t5_tokenizer

    save_t5_tokenizer(tmp)
    torch.manual_seed(seed)
    cfg = T5Config(
        vocab_size=32128,
        d_model=512,
        d_ff=2048,
        num_layers=6,
        num_heads=8,
        d_kv=64,
        feed_forward_proj="relu",
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    T5ForConditionalGeneration(cfg).save_pretrained(tmp)
    bb = load_backbone(tmp)
    ce = torch.randn(n_rows, 512) * 8.0  # encoder-state-like norms; keeps scores non-uniform
    return NpModel(bb, ce, token_ids)


def hf_np_model(np_model):
    """A plain HF T5 whose decoder embeddings and lm_head are the CE table (the authors' setup)."""
    import copy

    hf = copy.deepcopy(np_model.backbone.model)
    ce = np_model.ce.detach()
    hf.decoder.embed_tokens = torch.nn.Embedding.from_pretrained(ce.clone(), freeze=True)
    hf.lm_head = torch.nn.Linear(ce.shape[1], ce.shape[0], bias=False, dtype=ce.dtype, device=ce.device)
    hf.lm_head.weight.data.copy_(ce)
    hf.config.vocab_size = ce.shape[0]
    return hf


def run_hf(hf, tok, trie, paths, queries, beam, k, batch, *, max_new_tokens=12, values=None):
    """HF ``generate`` over the nested-dict ``trie``; per query the top-``k`` paths as their
    ``values`` (default: the path's index in ``paths``). CE row 1 is EOS, row 0 pads."""
    path_id = {tuple(p): (i if values is None else values[i]) for i, p in enumerate(paths)}

    def allowed(_, sent):  # the per-step Python callback of HF constrained decoding
        node = trie
        for t in sent.tolist()[1:]:
            node = node.get(t)
            if node is None:  # a finished beam padded after EOS: HF ignores it, allow pad
                return [0]
        return [t for t in node if t >= 0] or [0]

    out = []
    for lo in range(0, len(queries), batch):
        enc = tok(queries[lo : lo + batch], return_tensors="pt", padding=True).to(hf.device)
        gen = hf.generate(
            **enc,
            num_beams=beam,
            num_return_sequences=k,
            max_new_tokens=max_new_tokens,
            prefix_allowed_tokens_fn=allowed,
            length_penalty=0.0,
            early_stopping=True,
            do_sample=False,
        )
        for q in range(len(queries[lo : lo + batch])):
            seqs = gen[q * k : (q + 1) * k, 1:].tolist()
            # HF pads finished beams (with EOS here): cut each at its first EOS (CE row 1)
            out.append([path_id.get(tuple(s[: s.index(1) + 1]) if 1 in s else tuple(s)) for s in seqs])
    return out


def decoder_flops(np_model, rows_per_step: list[int], n_queries: int, enc_len: int) -> float:
    """FLOPs of the steps run: per decoder row the layer matmuls that run per step (self-attention
    q/k/v/o, cross-attention q/o, feed-forward), attention over the cached keys and the CE logits
    ``2·d·V_ce``; per query once the cross-attention k/v of the encoder states (cached after)."""
    dec = np_model.backbone.decoder
    d, v = np_model.ce.shape[1], np_model.ce.shape[0]
    cross_kv = sum(
        p.numel() for n, p in dec.named_parameters() if "EncDecAttention" in n and n.split(".")[-2] in ("k", "v")
    )
    per_step = sum(p.numel() for n, p in dec.named_parameters() if "embed" not in n and "relative" not in n) - cross_kv
    total = 2.0 * cross_kv * enc_len * n_queries
    for t, rows in enumerate(rows_per_step):  # steps restart per batch; t only sizes self-attention
        total += rows * (2 * per_step + 2 * d * v + 4 * d * (enc_len + t + 1) * len(dec.block))
    return total


class Clock:
    """Wall and process-CPU seconds of a block. With one torch thread the CPU seconds are
    what the work cost, which jobs of other users on a shared machine do not inflate (only
    memory-bandwidth sharing still shows), so ratios are reported by both clocks."""

    def __enter__(self):
        self._w, self._c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall, self.cpu = time.perf_counter() - self._w, time.process_time() - self._c


def alternate(repeats: int, run_ours, run_hf=None, before=None) -> tuple[dict, dict]:
    """Run ours and HF (when given) alternately ``repeats`` times, ``before()`` first each time
    (outside the clocks). Returns ``{side: (wall seconds, CPU seconds)}`` and each side's last output."""
    times: dict = {"ours": ([], []), "hf": ([], [])}
    last: dict = {"ours": None, "hf": None}
    for rep in range(repeats):
        if before is not None:
            before()
        for side, fn in (("ours", run_ours), ("hf", run_hf)):
            if fn is None:
                continue
            with Clock() as c:
                last[side] = fn()
            times[side][0].append(c.wall)
            times[side][1].append(c.cpu)
        hf_note = f", hf {times['hf'][0][-1]:.2f}s" if run_hf is not None else ""
        print(f"repeat {rep}: ours {times['ours'][0][-1]:.2f}s{hf_note}", flush=True)
    return times, last


def matmul_rate(dtype, device, repeats: int = 5) -> tuple[float, float]:
    """Best-of-``repeats`` plain (256 x 512) @ (512 x 32768) matmul rate in FLOP/s, by wall
    clock and by process CPU time."""
    a = torch.randn(256, 512, dtype=dtype, device=device)
    b = torch.randn(512, 32768, dtype=dtype, device=device)
    a @ b
    flop, wall, cpu = 2 * 256 * 512 * 32768, 0.0, 0.0
    for _ in range(repeats):
        with Clock() as c:
            a @ b
            if device.type == "cuda":
                torch.cuda.synchronize()
        wall, cpu = max(wall, flop / c.wall), max(cpu, flop / max(c.cpu, 1e-9))
    return wall, cpu


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=100_000)
    ap.add_argument("--ce-rows", type=int, default=160_000)
    ap.add_argument("--queries", type=int, default=16)
    ap.add_argument("--beam", type=int, default=10)
    ap.add_argument("--batch", type=int, default=0, help="ours: queries per batch (0: the decoder's automatic size)")
    ap.add_argument("--hf-batch", type=int, default=8, help="HF generate: queries per batch (the issue measured 8)")
    ap.add_argument("--repeats", type=int, default=3, help="ours and HF alternate; medians reported")
    ap.add_argument("--threads", type=int, default=0, help="torch threads for both sides (0: torch default)")
    ap.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"])
    ap.add_argument("--force-bf16", action="store_true", help="run bf16 even where it is emulated (slow)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument(
        "--approx",
        nargs="*",
        default=[],
        metavar="NLIST:NPROBE:TOPK",
        help="also run the approximate (FAISS IVF top-k) normalizer with these settings, fp32",
    )
    ap.add_argument("--out", default="benchmarks/results/decoding.json")
    args = ap.parse_args()
    from npdecode import decoding
    from npdecode.trie import build_trie
    from tests.tiny_models import toy_sentences

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    token_ids, paths = synthetic_index(args.docs, args.ce_rows, 32128)
    trie = build_trie(paths, id_space="ce")
    queries = toy_sentences(args.queries, seed=7)
    k = 10
    res = {
        "machine": {
            **conditions.measured(),
            "device": str(device),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "bf16_native": decoding.bf16_supported(device),
            "cuda": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
            "torch_threads": torch.get_num_threads(),
        },
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": "python " + " ".join(os.sys.argv),
        "setup": {
            "docs": args.docs,
            "ce_rows": args.ce_rows,
            "queries": args.queries,
            "beam": args.beam,
            "batch": args.batch or decoding.auto_batch_size(args.beam, args.ce_rows),
            "batch_auto": not args.batch,
            "hf_batch": args.hf_batch,
            "k": k,
            "repeats": args.repeats,
            "model": "random t5-small size (6+6 layers, d=512, d_ff=2048)",
        },
        "runs": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        base = build_model(Path(tmp), args.ce_rows, token_ids).to(device)
    enc_len = int(base.tokenize(queries)[1].sum(1).float().mean())
    hf_lists = None
    for name in args.dtypes:
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[name]
        if dtype is torch.bfloat16 and not decoding.bf16_supported(device) and not args.force_bf16:
            rate = matmul_rate(dtype, device, repeats=1)[0]
            res["runs"][name] = {
                "skipped": "bf16 matmuls are emulated on this device (no AVX512-BF16/AMX)",
                "matmul_gflops": round(rate / 1e9, 2),
                "fp32_matmul_gflops": round(matmul_rate(torch.float32, device)[0] / 1e9, 1),
            }
            print(name, json.dumps(res["runs"][name]), flush=True)
            continue
        model = decoding.cast_for_decoding(base, name)
        run = _run_dtype(model, trie, paths, queries, args, k, device, dtype, enc_len)
        ours_ids = run.pop("_ours_ids")
        hf_ids = run.pop("_hf_ids", None)
        if name == "fp32":
            hf_lists = hf_ids
            if args.approx:
                res["approx_normalizer"] = compare_approx(model, trie, queries, k, args, ours_ids)
        if hf_lists is not None and name != "fp32":
            run["top10_overlap_vs_hf_fp32"] = _overlap(ours_ids, hf_lists)
        res["runs"][name] = run
        print(name, json.dumps(run), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))


def _run_dtype(model, trie, paths, queries, args, k, device, dtype, enc_len) -> dict:
    """Alternate ours / HF ``args.repeats`` times on the same queries; medians and ratios."""
    from npdecode import decoding

    rows: list[int] = []
    orig_step = model._step_hidden  # both step paths run it once per decoder step

    def counting_step(prev, state):
        rows.append(len(prev))
        return orig_step(prev, state)

    model._step_hidden = counting_step
    hf = None if args.skip_hf else hf_np_model(model)
    hf_rows: list[int] = []
    if hf is not None:
        hf.lm_head.register_forward_hook(lambda m, i, o: hf_rows.append(i[0].shape[0] * i[0].shape[1]))
        dt = dict_trie(paths)
    decoding.search(model, trie, queries[:2], k=k, beam=args.beam, batch_size=args.batch or None)  # warm-up
    rates, cpu_rates = [], []

    def measure_rate():
        rate, cpu_rate = matmul_rate(dtype, device)
        rates.append(rate)
        cpu_rates.append(cpu_rate)

    def ours_run():
        rows.clear()
        return decoding.search(
            model, trie, queries, k=k, beam=args.beam, batch_size=args.batch or None, past_beam="none"
        )

    def hf_run():
        hf_rows.clear()
        return run_hf(hf, model.backbone.tokenizer, dt, paths, queries, args.beam, k, args.hf_batch)

    times, last = alternate(args.repeats, ours_run, hf_run if hf is not None else None, before=measure_rate)
    (ours_t, ours_c), (hf_t, hf_c) = times["ours"], times["hf"]
    ours, hf_ids = last["ours"], last["hf"]
    del model._step_hidden
    flops = decoder_flops(model, rows, len(queries), enc_len)
    ours_s, rate = float(np.median(ours_t)), float(np.median(rates))
    ours_cs, cpu_rate = float(np.median(ours_c)), float(np.median(cpu_rates))
    run = {
        "ours": {
            "seconds": [round(t, 3) for t in ours_t],
            "median_s": round(ours_s, 3),
            "qps": round(len(queries) / ours_s, 3),
            "decoder_rows": sum(rows),
            "gflop": round(flops / 1e9, 2),
            "matmul_gflops": round(rate / 1e9, 1),
            "flop_floor_s": round(flops / rate, 3),
            "vs_floor": round(ours_s / (flops / rate), 2),
            "achieved_gflops": round(flops / ours_s / 1e9, 1),
            "cpu_seconds": [round(t, 3) for t in ours_c],
            "median_cpu_s": round(ours_cs, 3),
            "matmul_gflops_cpu_time": round(cpu_rate / 1e9, 1),
            "vs_floor_cpu_time": round(ours_cs / (flops / cpu_rate), 2),
        }
    }
    ours_ids = [[v for v, _ in r] for r in ours]
    run["_ours_ids"] = ours_ids
    if hf is not None:
        hf_s, hf_cs = float(np.median(hf_t)), float(np.median(hf_c))
        hf_flops = decoder_flops(model, hf_rows, len(queries), enc_len)
        run["hf_generate"] = {
            "seconds": [round(t, 3) for t in hf_t],
            "median_s": round(hf_s, 3),
            "qps": round(len(queries) / hf_s, 3),
            "decoder_rows": sum(hf_rows),
            "gflop": round(hf_flops / 1e9, 2),
            "cpu_seconds": [round(t, 3) for t in hf_c],
            "median_cpu_s": round(hf_cs, 3),
        }
        run["speedup_vs_hf"] = round(hf_s / ours_s, 2)
        run["speedup_per_repeat"] = [round(h / o, 2) for h, o in zip(hf_t, ours_t)]
        run["speedup_vs_hf_cpu_time"] = round(hf_cs / ours_cs, 2)
        run["speedup_per_repeat_cpu_time"] = [round(h / o, 2) for h, o in zip(hf_c, ours_c)]
        run["top10_overlap_vs_hf_same_dtype"] = _overlap(ours_ids, hf_ids)
        run["top10_identical_vs_hf_same_dtype"] = float(np.mean([a == b for a, b in zip(ours_ids, hf_ids)]))
        run["_hf_ids"] = hf_ids
    return run


def compare_approx(model, trie, queries, k, args, exact_ids) -> list[dict]:
    """The approximate normalizer against the exact decoder, alternating in one process: per
    ``NLIST:NPROBE:TOPK`` setting, its build time, median seconds of both, the speed-up, and the
    top-10 overlap / identical lists against the exact lists ``exact_ids``."""
    from npdecode import decoding
    from npdecode.normalizer import IvfNormalizer

    out = []
    for spec in args.approx:
        nlist, nprobe, topk = (int(x) for x in spec.split(":"))
        t0 = time.perf_counter()
        norm = IvfNormalizer(model.ce, nlist=nlist or None, nprobe=nprobe, topk=topk)
        build_s = time.perf_counter() - t0
        exact_t, approx_t, exact_c, approx_c, got = [], [], [], [], None
        for _ in range(args.repeats):
            with Clock() as c:
                decoding.search(
                    model, trie, queries, k=k, beam=args.beam, batch_size=args.batch or None, past_beam="none"
                )
            exact_t.append(c.wall)
            exact_c.append(c.cpu)
            with Clock() as c:
                got = decoding.search(
                    model,
                    trie,
                    queries,
                    k=k,
                    beam=args.beam,
                    batch_size=args.batch or None,
                    past_beam="none",
                    normalizer=norm,
                )
            approx_t.append(c.wall)
            approx_c.append(c.cpu)
        got_ids = [[v for v, _ in r] for r in got]
        row = {
            **norm.settings(),
            "build_s": round(build_s, 2),
            "exact_s": [round(t, 3) for t in exact_t],
            "approx_s": [round(t, 3) for t in approx_t],
            "exact_cpu_s": [round(t, 3) for t in exact_c],
            "approx_cpu_s": [round(t, 3) for t in approx_c],
            "speedup_vs_exact": round(float(np.median(exact_t)) / float(np.median(approx_t)), 2),
            "speedup_vs_exact_cpu_time": round(float(np.median(exact_c)) / float(np.median(approx_c)), 2),
            "approx_qps": round(len(queries) / float(np.median(approx_t)), 3),
            "top10_overlap_vs_exact": round(_overlap(got_ids, exact_ids), 4),
            "top10_identical_vs_exact": float(np.mean([a == b for a, b in zip(got_ids, exact_ids)])),
            "top1_equal_vs_exact": float(np.mean([a[:1] == b[:1] for a, b in zip(got_ids, exact_ids)])),
        }
        print("approx", json.dumps(row), flush=True)
        out.append(row)
    return out


def _overlap(a, b) -> float:
    return float(np.mean([len(set(x) & set(y)) / max(len(y), 1) for x, y in zip(a, b)]))


if __name__ == "__main__":
    main()
