"""Which multislerp output is closer to exact arithmetic: ours or MergeKit's?

At ~250M parameters the two tools differ by up to 4.3e-4 on multislerp (``merge_vs_mergekit.md``),
though they agree on small models (``merge_parity.md``). This script recomputes the
barycenter in float64 for every tensor, straight from the inputs, and reports each tool's max
abs error against it. Inputs: the recipe's models and both tools' output dirs (run the merges
first, e.g. with ``merge_vs_mergekit.py --methods multislerp`` or by hand)::

    python benchmarks/merge_multislerp_accuracy.py --inputs /tmp/mergebench/inputs/llama-{0,1,2} \
        --weights 0.2 0.4 0.4 --ours OUT_OURS --mergekit OUT_MK

Writes ``benchmarks/results/merge_multislerp_accuracy.json`` (machine and date included).
"""

from __future__ import annotations

import argparse
import datetime as dt
import glob
import json
import os
import platform
from pathlib import Path

import torch
from safetensors import safe_open


def load(folder: str) -> dict[str, torch.Tensor]:
    out = {}
    for path in sorted(glob.glob(os.path.join(folder, "*.safetensors"))):
        with safe_open(path, "pt") as handle:
            for key in handle.keys():  # noqa: SIM118 (a safetensors handle is not iterable)
                out[key] = handle.get_tensor(key)
    return out


def barycenter64(xs: list[torch.Tensor], weights: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Multi-SLERP in float64 (no base model): see ``npdecode/merge/methods/multislerp.py``."""
    flat = [x.double().reshape(-1) for x in xs]
    norms = torch.stack([x.norm() for x in flat])
    units = [x / (n + eps) for x, n in zip(flat, norms)]
    mean = sum(w * u for w, u in zip(weights, units))
    mean = mean / mean.norm()
    tangent = sum(w * (u - (u @ mean) * mean) for w, u in zip(weights, units))
    length = tangent.norm() + eps
    return ((mean * torch.cos(length) + tangent * torch.sin(length) / length) * (weights @ norms)).reshape(xs[0].shape)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--inputs", nargs="+", required=True)
    ap.add_argument("--weights", nargs="+", type=float, required=True)
    ap.add_argument("--ours", required=True)
    ap.add_argument("--mergekit", required=True)
    ap.add_argument("--out", default="benchmarks/results/merge_multislerp_accuracy.json")
    args = ap.parse_args()
    weights = torch.tensor(args.weights, dtype=torch.float64)
    weights = weights / weights.sum()
    inputs = [load(d) for d in args.inputs]
    ours, mk = load(args.ours), load(args.mergekit)
    rows = []
    for name in sorted(ours):
        ref = barycenter64([d[name] for d in inputs], weights)
        rows.append({"tensor": name, "numel": ref.numel(),
                     "ours_max_abs_err": (ours[name].double() - ref).abs().max().item(),
                     "mergekit_max_abs_err": (mk[name].double() - ref).abs().max().item()})
    rows.sort(key=lambda r: -max(r["ours_max_abs_err"], r["mergekit_max_abs_err"]))
    res = {"machine": {"processor": platform.machine(), "nproc": os.cpu_count(), "torch": torch.__version__},
           "date": dt.datetime.now().isoformat(timespec="seconds"), "inputs": args.inputs, "weights": args.weights,
           "ours_max_abs_err": max(r["ours_max_abs_err"] for r in rows),
           "mergekit_max_abs_err": max(r["mergekit_max_abs_err"] for r in rows),
           "worst_tensors": rows[:5]}
    print(json.dumps({k: res[k] for k in ("ours_max_abs_err", "mergekit_max_abs_err")}))
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
