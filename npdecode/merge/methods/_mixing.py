"""Mixing weighted task vectors block by block: TIES sign election, (disjoint) sum,
normalisation, ``lambda``, base added; float arithmetic only, into reused scratch buffers.

Why float arithmetic only: on CPU, torch's ops that make or read bool masks (comparisons,
``where``, ``masked_fill``) cost 5-30x a float multiply per element, while ``copysign``,
``sign`` and ``clamp`` are vectorised. Each step below gives the values of the mask
formulation in ``_task_arithmetic``'s docstring bit for bit (only the sign of a zero may
differ, and NaN task vectors give NaN, as in MergeKit, instead of being dropped):

- ``sigma = copysign(1, total)`` is +1 where ``total >= 0`` (a sum is -0.0 only when every
  term is a zero, and then no entry is kept either way);
- ``a_i = clamp_min(d_i * sigma, 0)`` is ``|d_i|`` where ``d_i`` has the majority sign, else
  0: multiplying by +-1 is exact, so ``sigma * sum_i a_i`` equals the masked sum in the same
  order;
- the kept weight ``sum_i w_i * [a_i > 0]`` uses ``sign(a_i)`` (1 or 0) as the indicator.

Blocks are ``CPU_BLOCK`` entries on CPU: the temporaries of one block stay in the L2 cache,
and no larger than torch's grain size (32768), so each op runs on its calling thread; the
executor's worker threads run tensors in parallel instead.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

CPU_BLOCK = 1 << 15
# elsewhere (CUDA) per-op launch overhead dominates and memory is not the constraint
DEVICE_BLOCK = 1 << 24


def block_size(device: torch.device) -> int:
    return CPU_BLOCK if device.type == "cpu" else DEVICE_BLOCK


def blocks(n: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, size):
        yield start, min(start + size, n)


class BlockMixer:
    """``out = base + lambda * mix(d_1..d_n)`` for one block at a time.

    ``d_i`` are the weighted, sparsified task vectors of one block (each ``(m,)``, ``m <=``
    ``size``); ``mix`` is their sum (``consensus`` False) or the TIES disjoint sum (True), divided
    by the summed weights (of the kept entries, with ``consensus``) when ``normalize``. Scratch
    buffers are allocated once, ``(size,)`` each, in ``dtype`` on ``device``.
    """

    def __init__(
        self,
        weights: Sequence[float],
        *,
        consensus: bool,
        normalize: bool,
        lam: float,
        dtype: torch.dtype,
        device: torch.device,
        size: int,
    ):
        self.weights = list(weights)
        self.consensus = consensus
        self.normalize = normalize
        self.lam = float(lam)
        self.total_weight = sum(self.weights)
        # with every weight >= 1e-8 (and >= the dtype's smallest normal, so that none rounds to
        # 0) a kept-weight sum is 0 or >= 1e-8: a clamp replaces the zeros (where nothing was
        # kept, so the sum divided is 0 as well) without a mask
        self._tiny = torch.finfo(dtype).tiny
        self._positive_weights = all(w >= max(1e-8, self._tiny) for w in self.weights)

        def buffer() -> torch.Tensor:
            return torch.empty(size, dtype=dtype, device=device)

        if consensus:
            self._ones = torch.ones(size, dtype=dtype, device=device)
            self._total, self._sigma = buffer(), buffer()
            if normalize:
                self._kept_weight, self._indicator = buffer(), buffer()

    def mix(self, ds: Sequence[torch.Tensor], base: torch.Tensor, out: torch.Tensor) -> None:
        """Write the merged block into ``out`` (``(m,)``; it may be ``ds[0]``). ``ds`` are
        overwritten."""
        acc = self._disjoint_sum(ds) if self.consensus else self._sum(ds)
        if self.lam != 1.0:
            acc.mul_(self.lam)
        torch.add(acc, base, out=out)

    def _sum(self, ds: Sequence[torch.Tensor]) -> torch.Tensor:
        acc = ds[0]
        for d in ds[1:]:
            acc.add_(d)  # the order of torch.stack(ds).sum(0), bit for bit
        if self.normalize and abs(self.total_weight) >= 1e-8:
            acc.div_(self.total_weight)
        return acc

    def _disjoint_sum(self, ds: Sequence[torch.Tensor]) -> torch.Tensor:
        m = ds[0].numel()
        total, sigma = self._total[:m], self._sigma[:m]
        total.copy_(ds[0])
        for d in ds[1:]:
            total.add_(d)
        torch.copysign(self._ones[:m], total, out=sigma)  # majority sign, +1 for a zero sum
        kept = self._kept_weight[:m] if self.normalize else None
        for i, d in enumerate(ds):
            d.mul_(sigma).clamp_min_(0)  # |d| where d has the majority sign, else 0
            if kept is not None:
                indicator = torch.sign(d, out=self._indicator[:m])  # 1 where kept, 0 elsewhere
                if i == 0:
                    torch.mul(indicator, self.weights[0], out=kept)
                else:
                    kept.add_(indicator, alpha=self.weights[i])
        acc = ds[0]
        for d in ds[1:]:
            acc.add_(d)
        if kept is not None:
            if self._positive_weights:
                kept.clamp_min_(self._tiny)
            else:
                kept.masked_fill_(kept.abs() < 1e-8, 1.0)
            acc.div_(kept)
        return acc.mul_(sigma)
