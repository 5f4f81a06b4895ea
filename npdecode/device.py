"""Where work runs: ``--device auto|cpu|cuda[:n]`` resolved once, at the edge (library code follows
its tensors), and which process of a multi-process launch this is."""

from __future__ import annotations

from npdecode.errors import NpdecodeError


def resolve_device(spec: str | None = "auto") -> str:
    """``auto`` -> ``cuda`` when a CUDA device is usable, else ``cpu``; others are checked."""
    import torch

    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cpu":
        return "cpu"
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise NpdecodeError(f"--device {spec}: CUDA is not available on this machine; use --device cpu")
        index = spec.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise NpdecodeError(f"--device {spec}: no such GPU ({torch.cuda.device_count()} visible)")
        return spec
    raise NpdecodeError(f"--device {spec!r}: use auto, cpu or cuda[:n]")


def launcher_rank() -> int:
    """This process's global rank as the launcher says it (torchrun, SLURM, Lightning's ddp),
    before any Trainer exists: the one place that reads it (a running Trainer's ``global_rank``
    comes from the same variables). Without a launcher: 0."""
    import os

    for var in ("RANK", "SLURM_PROCID", "NODE_RANK", "LOCAL_RANK"):
        value = int(os.environ.get(var, "0") or 0)
        if value != 0:
            return value
    return 0


def flush_denormals() -> None:
    """Treat float denormals (float32 magnitudes under ~1.2e-38) as zero on the CPU from now on.

    A training run's intermediate tensors come to hold denormals as the model learns, and a CPU
    op with denormal operands runs up to ~100x slower (a matmul: 175x measured here): without
    this, the demo's steps slowed 2x between step 0 and step 800 on a CPU
    (``benchmarks/results/train_denormals.md``). Values that small carry nothing a model uses;
    GPUs are not affected. The setting belongs to a thread, and torch's intra-op threads take
    it from the thread that starts them: call this before the process's first parallel op (the
    training entry points do), after which the whole process keeps it.
    """
    import torch

    torch.set_flush_denormal(True)
