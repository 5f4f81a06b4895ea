"""Trie memory and build time: CSR ``build_trie`` vs a nested-dict trie on the same sequences.

Usage: .venv/bin/python benchmarks/trie.py [--n 1000000] [--out benchmarks/results/trie.json]
Synthetic identifiers: lengths 4..14 (mean ~9 tokens incl. EOS), ids Zipf-like over 32k.
Memory: the CSR arrays' nbytes; the nested dict's resident-set growth (RSS) while it is built.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import time
from pathlib import Path

import conditions  # benchmarks/conditions.py: the script's own folder is on sys.path
import numpy as np


def synthetic(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, 14, n) + 1  # + EOS
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    tokens = np.minimum(rng.zipf(1.3, int(offsets[-1])), 31_999).astype(np.int64) + 2
    tokens[offsets[1:] - 1] = 1  # EOS closes every identifier
    return tokens, offsets


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def nested_dict(seqs: list[list[int]]) -> dict:
    """The usual research-code trie: dict of dicts, the value list stored under key -1."""
    root: dict = {}
    for i, s in enumerate(seqs):
        node = root
        for t in s:
            node = node.setdefault(t, {})
        node.setdefault(-1, []).append(i)
    return root


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--out", default="benchmarks/results/trie.json")
    args = ap.parse_args()
    from npdecode.trie import build_trie

    tokens, offsets = synthetic(args.n)
    n_tokens = len(tokens)
    t0 = time.perf_counter()
    trie = build_trie((tokens, offsets))
    csr_s = time.perf_counter() - t0
    seqs = [tokens[offsets[i] : offsets[i + 1]].tolist() for i in range(args.n)]
    before = rss_bytes()
    t0 = time.perf_counter()
    d = nested_dict(seqs)
    dict_s = time.perf_counter() - t0
    dict_bytes = rss_bytes() - before
    # cross-check: both tries hold every sequence (spot check 1000)
    for i in np.random.default_rng(1).integers(0, args.n, 1000):
        node = d
        for t in seqs[i]:
            node = node[t]
        assert i in node[-1] and i in trie.values(trie.walk(seqs[i]))
    res = {
        "machine": conditions.measured(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "n_identifiers": args.n,
        "n_tokens": n_tokens,
        "n_nodes": trie.n_nodes,
        "csr": {
            "build_s": round(csr_s, 3),
            "bytes": trie.nbytes(),
            "bytes_per_token": round(trie.nbytes() / n_tokens, 2),
        },
        "nested_dict": {
            "build_s": round(dict_s, 3),
            "rss_bytes": dict_bytes,
            "bytes_per_token": round(dict_bytes / n_tokens, 2),
        },
        "build_speedup": round(dict_s / csr_s, 2),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
