"""Training step speed as a run goes on, with float denormals flushed to zero and without.

`npdecode train` flushes denormals (`npdecode.device.flush_denormals`) before its first
parallel op. This runs the demo's training setting (`configs/train-demo.yml`: Np, frozen cached
encoder, one decoder layer, learned logit scale) on the bundled sample in a bare loop (the
module's loss, backward, clipping, AdamW) and times ``--window`` steps at several points of the
run, once in a process that flushes and once in one that does not (the setting is per thread and
inherited by torch's intra-op threads when they start, so each side needs its own process).
Sides alternate over ``--repeats``; medians reported.

    .venv/bin/python benchmarks/train_denormals.py [--at 0 400 800] [--window 20] [--repeats 2] [--threads 2]

Writes ``benchmarks/results/train_denormals.{json,md}``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import conditions  # benchmarks/conditions.py: the script's own folder is on sys.path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CONFIG = ROOT / "configs" / "train-demo.yml"
SIDES = ("flushed", "not flushed")


def one_side(flush: bool, at: list[int], window: int, threads: int) -> dict:
    """In this (fresh) process: train and time ``window`` steps at each step count of ``at``."""
    import torch

    if flush:
        from npdecode.device import flush_denormals

        flush_denormals()  # first, as train_run does: before torch starts its threads
    torch.set_num_threads(threads)
    from train_speed import SAMPLE, _fill_cache, build  # the same model and batches as train_speed.py

    from npdecode.train.config import load_train_config

    sets = ("trainer.progress=false", "validation.queries=0", "index.progress=false", "trainer.accelerator=cpu")
    config = load_train_config(CONFIG, sets, **{"data.dataset": str(SAMPLE)})
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        module, datamodule = build(config, Path(tmp), lambda *_: None)
    _fill_cache(module, datamodule)  # the timed steps are decoder steps
    module.train()
    opt = module.configure_optimizers()
    optimizer, schedule = opt["optimizer"], opt["lr_scheduler"]["scheduler"]
    params = [p for p in module.parameters() if p.requires_grad]
    batches = datamodule.train_dataloader()

    def steps(n: int) -> float:
        done, start = 0, time.perf_counter()
        while done < n:
            for batch in batches:
                module.loss(batch).backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
                done += 1
                if done == n:
                    break
        return time.perf_counter() - start

    rates, trained = {}, 0
    for point in at:
        steps(point - trained)
        rates[str(point)] = window * config.data.batch_size / steps(window)
        trained = point + window
    return {"examples_per_second": rates, "logit_scale": float(module.model.log_scale.exp())}


def render(out: dict) -> None:
    at = out["at"]
    lines = [
        "# Training steps with float denormals flushed to zero, and without",
        "",
        (
            f"{out['date']}, {out['machine']['cpu']}, {out['machine']['nproc']} cores (shared), torch "
            f"{out['machine']['torch']}, {out['threads']} threads. The demo's training setting "
            "(`configs/train-demo.yml`) on the bundled sample in a bare loop (loss, backward, clip, AdamW), "
            f"encoder states cached first; examples per second over {out['window']} steps starting at each "
            f"step count; median of {out['repeats']} runs per side, sides alternating, each in its own process."
        ),
        "",
        "| side | " + " | ".join(f"step {a}" for a in at) + " |",
        "| --- | " + " | ".join("---" for _ in at) + " |",
    ]
    for side in SIDES:
        lines.append(f"| {side} | " + " | ".join(f"{out['median'][side][str(a)]:.1f}" for a in at) + " |")
    lines.append("| speed-up | " + " | ".join(f"{out['speedup'][str(a)]:.2f}x" for a in at) + " |")
    lines += [
        "",
        (
            "Without flushing, the steps slow down as the model trains (denormals appear among the intermediate "
            "tensors of its forward and backward passes); flushed, they keep their pace."
        ),
        "",
        f"Command: `{out['command']}`",
    ]
    (RESULTS / "train_denormals.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--at", type=int, nargs="+", default=[0, 400, 800])
    parser.add_argument("--window", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)  # a child process
    args = parser.parse_args()
    if args.side:
        print(json.dumps(one_side(args.side == "flushed", args.at, args.window, args.threads)))
        return
    runs: dict[str, list[dict]] = {side: [] for side in SIDES}
    for r in range(args.repeats):
        for side in SIDES if r % 2 == 0 else SIDES[::-1]:
            child = [sys.executable, __file__, "--side", side, "--window", str(args.window)]
            child += ["--threads", str(args.threads), "--at", *map(str, args.at)]
            done = subprocess.run(child, capture_output=True, text=True, check=True)
            runs[side].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(side, runs[side][-1], flush=True)
    median = {
        side: {str(a): statistics.median(run["examples_per_second"][str(a)] for run in runs[side]) for a in args.at}
        for side in SIDES
    }
    out = {
        "machine": conditions.measured(threads=args.threads),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "benchmarks/train_denormals.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "threads": args.threads,
        "at": args.at,
        "window": args.window,
        "repeats": args.repeats,
        "runs": runs,
        "median": median,
        "speedup": {str(a): round(median["flushed"][str(a)] / median["not flushed"][str(a)], 2) for a in args.at},
    }
    (RESULTS / "train_denormals.json").write_text(json.dumps(out, indent=2) + "\n")
    render(out)
    print((RESULTS / "train_denormals.md").read_text())


if __name__ == "__main__":
    main()
