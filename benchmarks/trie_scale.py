"""The identifier trie at KILT size: build time and memory, file size, load time, per-query walk.

KILT's knowledge source has 5.9M pages whose titles give ~37M identifier-token occurrences
(~6.3 per title, +EOS), over a CE table of ~160k rows. The synthetic trie here has that shape:
identifier lengths 1 + Poisson(5.3) (at most 30), ids drawn Zipf-like from ``--rows`` rows, so
frequent first ids are shared by many identifiers as title words are. Each size runs in its own
process (peak RSS is the process's, the generated sequences counted separately).

Measured per size: ``build_trie`` from flat arrays (seconds, peak RSS above the sequences),
``save`` (seconds, MB), ``Trie.load`` memory-mapped (the default) vs read into memory (median
of 5), the trie's torch form (``to_torch``, made once per device and kept), and the trie's share
of a query: a beam-10 constrained walk with random scores (expand the beam's nodes, top-10 of
their children, until every hypothesis ends), 1 and 32 queries at a time. The model's forward
pass is not part of it: this is what the trie adds at that size.

    .venv/bin/python benchmarks/trie_scale.py [--sizes 100000 1000000 5900000]
"""

from __future__ import annotations

import argparse
import datetime
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import conditions  # benchmarks/conditions.py: the script's own folder is on sys.path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

EOS = 1


def sequences(n: int, rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Flat ``(tokens, offsets)`` of ``n`` identifiers ending in EOS."""
    rng = np.random.default_rng(seed)
    lengths = np.minimum(1 + rng.poisson(5.3, n), 30) + 1  # + EOS
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    ranks = rng.zipf(1.3, int(offsets[-1]))
    tokens = 2 + (ranks - 1) % (rows - 2)
    tokens[offsets[1:] - 1] = EOS
    return tokens.astype(np.int64), offsets


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def walk(ttrie, n_queries: int, beam: int, rng) -> int:
    """Beam search over the trie with random scores for ``n_queries`` queries at once; steps."""
    import torch

    nodes = torch.zeros(n_queries, dtype=torch.long)  # one root hypothesis per query
    query = torch.arange(n_queries)
    scores = torch.zeros(n_queries)
    steps = 0
    while len(nodes):
        row, _ids, child = ttrie.expand(nodes)
        if not len(row):
            break
        cand = scores[row] + torch.from_numpy(rng.standard_normal(len(row)).astype(np.float32))
        owner = query[row]
        # top `beam` candidates per query
        order = torch.argsort(owner * 1e6 - cand)  # query ascending, score descending
        owner, cand, child = owner[order], cand[order], child[order]
        first = torch.searchsorted(owner, owner, right=False)
        keep = (torch.arange(len(owner)) - first) < beam
        owner, cand, child = owner[keep], cand[keep], child[keep]
        alive = ~ttrie.is_terminal[child]
        nodes, query, scores = child[alive], owner[alive], cand[alive]
        steps += 1
    return steps


def child(n: int, rows: int, out: Path) -> None:
    import torch

    from npdecode.trie import Trie, build_trie

    torch.set_num_threads(2)
    tokens, offsets = sequences(n, rows)
    base = _rss_mb()
    start = time.perf_counter()
    trie = build_trie((tokens, offsets), id_space="ce")
    build_s = time.perf_counter() - start
    build_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
    path = out.with_suffix(".npz")
    start = time.perf_counter()
    trie.save(path)
    save_s = time.perf_counter() - start
    n_nodes, nbytes = trie.n_nodes, trie.nbytes()
    del trie, tokens, offsets
    loads = {}
    for mode in ("mmap", "read"):
        times = []
        for _ in range(5):
            start = time.perf_counter()
            loaded = Trie.load(path, mmap=mode == "mmap")
            times.append(time.perf_counter() - start)
            del loaded
        loads[mode] = statistics.median(times)
    trie = Trie.load(path)
    start = time.perf_counter()
    ttrie = trie.to_torch("cpu")
    to_torch_s = time.perf_counter() - start
    start = time.perf_counter()
    again = trie.to_torch("cpu")
    cached_s = time.perf_counter() - start
    assert again is ttrie
    rng = np.random.default_rng(1)
    per_query = {}
    walk(ttrie, 32, 10, rng)  # warm-up (allocator, first-touch of the mapped pages)
    for batch in (1, 32):
        times = []
        for _ in range(max(3, 64 // batch)):
            start = time.perf_counter()
            walk(ttrie, batch, 10, rng)
            times.append((time.perf_counter() - start) / batch)
        per_query[str(batch)] = statistics.median(times) * 1000
    result = {
        "identifiers": n,
        "nodes": n_nodes,
        "trie_mb": nbytes / 2**20,
        "file_mb": path.stat().st_size / 2**20,
        "build_s": build_s,
        "build_peak_mb_above_sequences": build_peak,
        "save_s": save_s,
        "load_mmap_s": loads["mmap"],
        "load_read_s": loads["read"],
        "to_torch_s": to_torch_s,
        "to_torch_again_s": cached_s,
        "walk_ms_per_query": per_query,
    }
    path.unlink()
    out.write_text(json.dumps(result))


def render(record: dict) -> str:
    m = record["machine"]
    lines = [
        "# The identifier trie at KILT size",
        "",
        (
            f"{record['date']}, {m['cpu']} ({m['nproc']} cores, shared), torch {m['torch']}, load average "
            f"{m['load_average_before']} -> {m['load_average_after']}. Command: `{record['command']}`."
        ),
        "",
        (
            f"Synthetic identifiers of KILT's shape (1 + Poisson(5.3) ids + EOS, Zipf-drawn from {record['ce_rows']:,} "
            "CE "
            "rows); each size in its own process. Load: median of 5 (`mmap`: the default, arrays memory-mapped from "
            "the uncompressed `.npz`; `read`: into memory). Walk: the trie's share of a beam-10 query (expand + "
            "top-10 with random scores until every hypothesis ends), per query, 1 and 32 queries at a time. The "
            "first step expands the root, whose children are every distinct first id (tens of thousands here): "
            "that step dominates the walk, and batching queries shares its fixed costs."
        ),
        "",
        (
            "| identifiers | nodes | trie MB | build s | build peak MB | save s | load mmap s | load read s | "
            "to_torch s (again) | walk ms/query (1 / 32) |"
        ),
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in record["sizes"]:
        if "failed" in r:
            lines.append(f"| {r['identifiers']:,} | {r['failed']} | | | | | | | | |")
            continue
        lines.append(
            f"| {r['identifiers']:,} | {r['nodes']:,} | {r['trie_mb']:.0f} | {r['build_s']:.1f} | "
            f"{r['build_peak_mb_above_sequences']:.0f} | {r['save_s']:.2f} | {r['load_mmap_s']:.4f} | "
            f"{r['load_read_s']:.3f} | {r['to_torch_s']:.3f} ({r['to_torch_again_s']:.6f}) | "
            f"{r['walk_ms_per_query']['1']:.2f} / {r['walk_ms_per_query']['32']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000, 5_900_000])
    parser.add_argument("--rows", type=int, default=160_000)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "trie_scale.json")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--render", type=Path, help=argparse.SUPPRESS)  # rewrite the .md of a results .json
    args = parser.parse_args()
    if args.render:
        return args.render.with_suffix(".md").write_text(render(json.loads(args.render.read_text())))
    if args.child:
        return child(args.child, args.rows, args.child_out)
    rows = []
    with tempfile.TemporaryDirectory(prefix="npdecode-trie-") as work:
        for n in args.sizes:
            out = Path(work) / f"{n}.json"
            cmd = [sys.executable, __file__, "--child", str(n), "--child-out", str(out), "--rows", str(args.rows)]
            proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
            if proc.returncode:
                rows.append({"identifiers": n, "failed": (proc.stderr.strip().splitlines() or ["killed"])[-1][:200]})
            else:
                rows.append(json.loads(out.read_text()))
            print(json.dumps(rows[-1]), flush=True)
    record = {
        "benchmark": "identifier trie at KILT size",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": conditions.measured(device="cpu"),
        "command": "benchmarks/trie_scale.py " + " ".join(sys.argv[1:]),
        "ce_rows": args.rows,
        "sizes": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(render(record))
    print(render(record))


if __name__ == "__main__":
    main()
