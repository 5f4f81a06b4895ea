"""Encoder throughput of t5-base / t5-large shapes: the number docs/scale.md's KILT cost model needs.

A randomly initialised T5 encoder of each shape (speed does not depend on the weights, nothing
is downloaded) runs full 512-token batches, as KILT's long pages give, under the index build's
precision (bf16 autocast on CUDA, fp32 on CPU). Reported: tokens per second (median of
``--repeats`` timed batches after a warm-up) and the achieved TFLOP/s against the model's
FLOP count (2 x non-embedding parameters per token + attention), and what that rate means for
KILT's ~3.0B tokens.

    .venv/bin/python benchmarks/encode_rate.py --device cuda [--shapes t5-base t5-large]
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

import conditions  # benchmarks/conditions.py: the script's own folder is on sys.path
import torch

SHAPES = {  # d_model, d_ff, layers, heads (the original T5 checkpoints)
    "t5-small": (512, 2048, 6, 8),
    "t5-base": (768, 3072, 12, 12),
    "t5-large": (1024, 4096, 24, 16),
}
KILT_TOKENS = 5.9e6 * 512


def flops_per_token(d: int, ff: int, layers: int, length: int) -> float:
    dense = layers * (4 * d * d + 2 * d * ff)  # attention projections + feed-forward, per token
    attention = layers * 2 * length * d  # scores and weighted sum
    return 2 * (dense + attention)


def measure(shape: str, device: str, batch: int, length: int, repeats: int) -> dict:
    from transformers import T5Config, T5EncoderModel

    d, ff, layers, heads = SHAPES[shape]
    config = T5Config(vocab_size=32128, d_model=d, d_kv=d // heads, d_ff=ff, num_layers=layers, num_heads=heads)
    model = T5EncoderModel(config).to(device).eval()
    ids = torch.randint(3, 32000, (batch, length), device=device)
    mask = torch.ones_like(ids)
    bf16 = device.startswith("cuda") and torch.cuda.is_bf16_supported()
    times = []
    with torch.inference_mode(), torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=bf16):
        for i in range(repeats + 1):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            model(input_ids=ids, attention_mask=mask)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            if i:  # the first batch is the warm-up
                times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    rate = batch * length / seconds
    tflops = rate * flops_per_token(d, ff, layers, length) / 1e12
    return {
        "shape": shape,
        "precision": "bf16" if bf16 else "fp32",
        "batch": batch,
        "length": length,
        "tokens_per_s": rate,
        "tflops": tflops,
        "kilt_encode_hours_one_device": KILT_TOKENS / rate / 3600,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shapes", nargs="+", default=["t5-base", "t5-large"], choices=sorted(SHAPES))
    parser.add_argument("--batch", type=int, default=None, help="sequences per batch (default 64 on CUDA, 2 on CPU)")
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "encode_rate.json")
    args = parser.parse_args()
    batch = args.batch or (64 if args.device.startswith("cuda") else 2)
    rows = [measure(s, args.device, batch, args.length, args.repeats) for s in args.shapes]
    gpu = torch.cuda.get_device_name() if args.device.startswith("cuda") else None
    record = {
        "benchmark": "encoder throughput of T5 shapes at 512 tokens (docs/scale.md)",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": conditions.measured(device=args.device, gpu=gpu),
        "command": "benchmarks/encode_rate.py " + " ".join(sys.argv[1:]),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    for r in rows:
        print(
            f"{r['shape']} {r['precision']} batch {r['batch']}x{r['length']}: {r['tokens_per_s']:,.0f} tokens/s, "
            f"{r['tflops']:.1f} TFLOP/s; KILT ({KILT_TOKENS:.2e} tokens) on one device: "
            f"{r['kilt_encode_hours_one_device']:.2f} h"
        )


if __name__ == "__main__":
    main()
