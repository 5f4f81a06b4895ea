"""The async CE rebuild with the corpus's states below the trained encoder layers kept, vs the
whole encoder every time.

`ce_encoder: async` with `model.train_encoder_layers: N` rebuilds the CE table from an encoder
whose bottom layers never change: `CERebuilder(frozen_below=L-N)` keeps the states entering
layer L-N from its first rebuild and later rebuilds run only the top N layers. Both sides
rebuild the same corpus (the bundled SciFact sample, or ``--corpus``) with the same backbone
(bert2bert from all-MiniLM-L6-v2, as `configs/train-scifact-cpu.yml`), the top layer perturbed
between rebuilds as training would move it; the tables are compared (they must be equal), and
the seconds of each rebuild are reported (medians over ``--repeats`` alternating rebuilds
after the first, which fills the kept states).

    .venv/bin/python benchmarks/async_rebuild.py [--repeats 3] [--threads 2] [--top 1]

Writes ``benchmarks/results/async_rebuild.{json,md}``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import conditions  # benchmarks/conditions.py: the script's own folder is on sys.path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"
SAMPLE = ROOT / "npdecode" / "data" / "scifact-sample" / "corpus.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=SAMPLE)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--top", type=int, default=1, help="Encoder layers that train (the rest are kept).")
    args = parser.parse_args()

    import torch

    from npdecode.backbone import load_backbone
    from npdecode.device import flush_denormals
    from npdecode.index.builder import CERebuilder
    from npdecode.train.config import load_train_config
    from npdecode.train.sources import resolve_backbone

    flush_denormals()
    torch.set_num_threads(args.threads)
    config = load_train_config(ROOT / "configs" / "train-scifact-cpu.yml", ("index.progress=false",))
    with tempfile.TemporaryDirectory() as tmp:
        backbone = load_backbone(resolve_backbone(config.backbone, Path(tmp)))
    layers = backbone.encoder_layers()
    split = len(layers) - args.top
    sides = {
        "whole encoder": CERebuilder(args.corpus, config.index, backbone),
        "kept states below the trained layers": CERebuilder(args.corpus, config.index, backbone, frozen_below=split),
    }
    kept = sides["kept states below the trained layers"]
    generator = torch.Generator().manual_seed(0)

    def move_top_layers() -> None:  # what training does between two rebuilds
        with torch.no_grad():
            for layer in layers[split:]:
                for p in layer.parameters():
                    p.add_(1e-3 * torch.randn(p.shape, generator=generator))

    start = time.perf_counter()
    kept.rebuild(backbone)
    first = time.perf_counter() - start
    seconds: dict[str, list[float]] = {name: [] for name in sides}
    max_diff = 0.0
    for r in range(args.repeats):
        move_top_layers()
        tables = {}
        for name in list(sides) if r % 2 == 0 else list(sides)[::-1]:
            start = time.perf_counter()
            tables[name] = sides[name].rebuild(backbone)
            seconds[name].append(time.perf_counter() - start)
            print(f"{name}: {seconds[name][-1]:.1f} s", flush=True)
        (a_rows, a_tok, a_rec, _), (b_rows, b_tok, b_rec, _) = tables.values()
        assert (a_tok == b_tok).all() and [x.ce for x in a_rec] == [x.ce for x in b_rec], "the tables differ"
        max_diff = max(max_diff, float(abs(a_rows - b_rows).max()))
    medians = {name: statistics.median(v) for name, v in seconds.items()}
    out = {
        "machine": conditions.measured(threads=args.threads),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "benchmarks/async_rebuild.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "corpus": str(args.corpus.relative_to(ROOT)) if args.corpus.is_relative_to(ROOT) else str(args.corpus),
        "documents": len(kept.groups),
        "encoder_layers": len(layers),
        "trained_layers": args.top,
        "kept_mib": round(kept.bottom_bytes / 2**20, 1),
        "first_rebuild_seconds": round(first, 1),
        "seconds": seconds,
        "median_seconds": medians,
        "speedup": round(medians["whole encoder"] / medians["kept states below the trained layers"], 2),
        "max_abs_difference": max_diff,
    }
    (RESULTS / "async_rebuild.json").write_text(json.dumps(out, indent=2) + "\n")
    lines = [
        "# async CE rebuild: states below the trained layers kept vs the whole encoder",
        "",
        (
            f"`{out['command']}` ({out['date']}; {out['machine']['cpu']}, {out['machine']['nproc']} shared cores, "
            f"torch {out['machine']['torch']}, {args.threads} threads; load average "
            f"{out['machine']['load_average_before']} before, {out['machine']['load_average_after']} after)."
        ),
        "",
        (
            f"{out['documents']} documents, bert2bert from all-MiniLM-L6-v2 ({len(layers)} encoder layers, the top "
            f"{args.top} training), `configs/train-scifact-cpu.yml`'s index settings. Seconds per rebuild, median of "
            f"{args.repeats} (sides alternated, the top layer moved before each pair):"
        ),
        "",
        "| rebuild | seconds |",
        "| --- | --- |",
        f"| whole encoder | {medians['whole encoder']:.1f} |",
        f"| kept states below the trained layers | {medians['kept states below the trained layers']:.1f} |",
        "",
        (
            f"**{out['speedup']}x**; the first rebuild (it fills the kept states, {out['kept_mib']} MiB) took "
            f"{first:.1f} s. Tables equal (same tokens and targets; largest difference of a CE value "
            f"{max_diff:.1e})."
        ),
    ]
    (RESULTS / "async_rebuild.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
