"""Which merge output is closer to exact arithmetic, ours or MergeKit's (multislerp, karcher, sce)?

At ~250M parameters the two tools differ beyond 1e-5 on multislerp (4.3e-4) and karcher
(1.1e-5 on a few entries) (``merge_vs_mergekit.md``), though they agree on small models
(``merge_parity.md``). This script recomputes the method in float64 for every tensor, straight
from the inputs, with plain full-tensor code written from the formula (not our blockwise
implementation), and reports each tool's max abs error against it. Inputs: the recipe's models
and both tools' output dirs (run the merges first, by hand or with ``merge_vs_mergekit.py``)::

    python benchmarks/merge_accuracy.py --method multislerp --inputs /tmp/mergebench/inputs/llama-{0,1,2} \
        --weights 0.2 0.4 0.4 --ours OUT_OURS --mergekit OUT_MK
    python benchmarks/merge_accuracy.py --method karcher --inputs /tmp/mergebench/inputs/llama-{0,1,2} \
        --max-iter 10 --tol 1e-5 --ours OUT_OURS --mergekit OUT_MK
    python benchmarks/merge_accuracy.py --method sce --inputs /tmp/mergebench/inputs/llama-{0,1,2} \
        --select-topk 0.5 --ours OUT_OURS --mergekit OUT_MK

For sce (first input = base) the selection is the one thing not computed in float64: the
variances are float32, as both tools compute them, and the reference keeps, among entries whose
variance equals the k-th largest, the first ones in flat order (ours does too; MergeKit's
``torch.topk`` leaves that choice unspecified). It also counts, per tool, the entries more than
1e-5 off the reference whose variance is *not* tied at the cut (``*_untied_over_1e-5``): any
such entry is a real difference, not a tie-break.

Writes ``benchmarks/results/merge_<method>_accuracy.json`` (machine and date included).
"""

from __future__ import annotations

import argparse
import datetime as dt
import glob
import json
import os
from pathlib import Path

import conditions  # benchmarks/conditions.py: the script's own folder is on sys.path
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


def karcher64(xs: list[torch.Tensor], max_iter: int, tol: float) -> torch.Tensor:
    """Equal-weight Karcher mean in float64: see ``npdecode/merge/methods/karcher.py``."""
    flat = [x.double().reshape(-1) for x in xs]
    norms = [x.norm() for x in flat]
    live = [i for i, n in enumerate(norms) if n > tol]
    if not live:
        return torch.zeros(xs[0].shape, dtype=torch.float64)
    if len(live) == 1:
        return flat[live[0]].reshape(xs[0].shape)
    units = [flat[i] / norms[i] for i in live]
    w = 1.0 / len(live)
    u = sum(units) * w
    u = units[0].clone() if u.norm() < tol else u / u.norm()
    for _ in range(max_iter):
        step = torch.zeros_like(u)
        for x in units:
            cos = (u @ x).clamp(-1.0, 1.0)
            theta = torch.arccos(cos)
            if theta >= tol:
                step += w * theta / torch.sin(theta) * (x - cos * u)
        length = step.norm()
        if length < tol:
            break
        u = u * torch.cos(length) + step * (torch.sin(length) / length)
        u = u / u.norm()
    return (u * (sum(norms[i] for i in live) * w)).reshape(xs[0].shape)


def sce64(xs: list[torch.Tensor], topk: float) -> tuple[torch.Tensor, torch.Tensor]:
    """SCE in float64 (``xs[0]`` the base): see ``npdecode/merge/methods/sce.py``. Returns the
    merge and a bool mask of the entries whose float32 variance ties with the selection's cut."""
    base, others = xs[0], xs[1:]
    d32 = torch.stack([x.float() - base.float() for x in others])
    var = d32.var(dim=0, correction=0).reshape(-1)
    tied = torch.zeros(var.numel(), dtype=torch.bool)
    keep = torch.ones(var.numel(), dtype=torch.bool)
    if topk < 1:
        k = int(topk * int(torch.count_nonzero(var)))
        keep = torch.zeros(var.numel(), dtype=torch.bool)
        if k > 0:
            cut = torch.sort(var, descending=True).values[k - 1]
            keep = var > cut
            tied = var == cut
            keep[torch.nonzero(tied).squeeze(1)[: k - int(keep.sum())]] = True
    deltas = [(x.double() - base.double()).reshape(-1) * keep for x in others]
    energy = torch.stack([(d * d).mean() for d in deltas])
    coeff = torch.full_like(energy, 1.0 / len(deltas)) if energy.sum().abs() < 1e-6 else energy / energy.sum()
    total = sum(deltas)
    agree = [torch.where(total >= 0, d > 0, d < 0).double() for d in deltas]
    num = sum(c * a * d for c, a, d in zip(coeff, agree, deltas))
    den = sum(c * a for c, a in zip(coeff, agree)).clamp_min(1e-6)
    return (base.double().reshape(-1) + num / den).reshape(base.shape), tied.reshape(base.shape)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--method", choices=["multislerp", "karcher", "sce"], default="multislerp")
    ap.add_argument("--inputs", nargs="+", required=True)
    ap.add_argument("--weights", nargs="+", type=float, help="multislerp: the models' weights")
    ap.add_argument("--max-iter", type=int, default=10, help="karcher")
    ap.add_argument("--tol", type=float, default=1e-5, help="karcher")
    ap.add_argument("--select-topk", type=float, default=1.0, help="sce")
    ap.add_argument("--ours", required=True)
    ap.add_argument("--mergekit", required=True)
    ap.add_argument("--out", help="default: benchmarks/results/merge_<method>_accuracy.json")
    args = ap.parse_args()
    if args.method == "multislerp":
        if not args.weights:
            ap.error("--weights is required for multislerp")
        weights = torch.tensor(args.weights, dtype=torch.float64)
        weights = weights / weights.sum()
        reference = lambda xs: barycenter64(xs, weights)
    elif args.method == "karcher":
        reference = lambda xs: karcher64(xs, args.max_iter, args.tol)
    else:
        reference = lambda xs: sce64(xs, args.select_topk)
    out = Path(args.out or f"benchmarks/results/merge_{args.method}_accuracy.json")
    inputs = [load(d) for d in args.inputs]
    ours, mk = load(args.ours), load(args.mergekit)
    rows = []
    for name in sorted(ours):
        ref = reference([d[name] for d in inputs])
        ref, tied = ref if isinstance(ref, tuple) else (ref, None)
        row = {"tensor": name, "numel": ref.numel()}
        for tool, merged in (("ours", ours[name]), ("mergekit", mk[name])):
            err = (merged.double() - ref).abs()
            row[f"{tool}_max_abs_err"] = err.max().item()
            if tied is not None:
                over = err > 1e-5
                row[f"{tool}_tied_at_cut"] = int(tied.sum())
                row[f"{tool}_over_1e-5"] = int(over.sum())
                row[f"{tool}_untied_over_1e-5"] = int((over & ~tied).sum())
        rows.append(row)
    rows.sort(key=lambda r: -max(r["ours_max_abs_err"], r["mergekit_max_abs_err"]))
    res = {
        "machine": conditions.measured(),
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "method": args.method,
        "inputs": args.inputs,
        "weights": args.weights,
        "max_iter": args.max_iter if args.method == "karcher" else None,
        "tol": args.tol if args.method == "karcher" else None,
        "select_topk": args.select_topk if args.method == "sce" else None,
        "ours_max_abs_err": max(r["ours_max_abs_err"] for r in rows),
        "mergekit_max_abs_err": max(r["mergekit_max_abs_err"] for r in rows),
        "worst_tensors": rows[:5],
    }
    if args.method == "sce":
        for tool in ("ours", "mergekit"):
            for key in ("over_1e-5", "untied_over_1e-5"):
                res[f"{tool}_{key}"] = sum(r[f"{tool}_{key}"] for r in rows)
    print(json.dumps({k: v for k, v in res.items() if k.startswith(("ours_", "mergekit_"))}))
    out.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
