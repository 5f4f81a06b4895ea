"""Exact order statistics of large 1-D tensors without sorting, copying or index arrays.

``kth_smallest`` is a radix select (one histogram pass per 16-bit digit, block by block);
``top_k_mask`` marks the ``k`` largest entries with it (``torch.topk`` would return ``k``
values and ``k`` int64 indices: for half of a 32M-entry tensor, 192 MiB, plus its workspace).
"""

from __future__ import annotations

import torch

from npdecode.merge.methods import _mixing

_KEY_DTYPES = {torch.float32: torch.int32, torch.float64: torch.int64}


def kth_smallest(flat: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k``-th smallest value of ``flat`` (1-D float32/float64 without NaN, ``1 <= k <=
    numel``) as a 0-dim tensor: radix select over integer keys that order like the floats,
    one histogram pass per 16-bit digit, block by block (no copy, no index array)."""
    key_dtype = _KEY_DTYPES[flat.dtype]
    width = torch.iinfo(key_dtype).bits
    top = 1 << (width - 1)
    size = _mixing.block_size(flat.device) * 32  # bigger blocks: few, cheap passes

    def keys(block):  # unsigned order, in a signed dtype: flip all bits of negatives, the sign of the rest
        bits = block.view(key_dtype)
        return bits ^ ((bits >> (width - 1)) | torch.iinfo(key_dtype).min)

    prefix, rank = 0, k
    for shift in range(width - 16, -1, -16):
        hist = torch.zeros(1 << 16, dtype=torch.int64, device=flat.device)
        for start, stop in _mixing.blocks(flat.numel(), size):
            u = keys(flat[start:stop])
            if shift + 16 < width:  # only keys whose higher digits equal the prefix so far
                high = width - shift - 16
                u = u[((u >> (shift + 16)) & ((1 << high) - 1)) == (prefix >> (shift + 16))]
            hist += torch.bincount(((u >> shift) & 0xFFFF).to(torch.int64), minlength=1 << 16)
        below = hist.cumsum(0)
        digit = int(torch.searchsorted(below, rank))  # the first digit whose count reaches rank
        rank -= int(below[digit - 1]) if digit > 0 else 0
        prefix |= digit << shift
    bits = prefix ^ top if prefix & top else ~prefix & ((1 << width) - 1)  # back to the float's bits
    if bits >= top:
        bits -= 1 << width  # as a signed integer of the key dtype
    return torch.tensor(bits, dtype=key_dtype, device=flat.device).view(flat.dtype)


def top_k_mask(values: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask (shape of ``values``) of its ``k`` largest entries: every entry above the
    ``k``-th largest value and, among the entries equal to it, the first ones in flat order.

    Float32/float64 without NaN go through :func:`kth_smallest`; anything else through
    ``torch.topk`` (which ranks NaN largest and breaks ties as it likes).
    """
    flat = values.reshape(-1)
    n = flat.numel()
    if k <= 0:
        return torch.zeros(values.shape, dtype=torch.bool, device=values.device)
    if k >= n:
        return torch.ones(values.shape, dtype=torch.bool, device=values.device)
    if flat.dtype not in _KEY_DTYPES or bool(torch.isnan(flat).any()):
        mask = torch.zeros(n, dtype=torch.bool, device=values.device)
        mask[torch.topk(flat, k, largest=True, sorted=False).indices] = True
        return mask.view(values.shape)
    threshold = kth_smallest(flat, n - k + 1)
    mask = flat > threshold
    missing = k - int(torch.count_nonzero(mask))
    if missing > 0:  # ties at the threshold: the first ones in flat order
        mask[torch.nonzero(flat == threshold).squeeze(1)[:missing]] = True
    return mask.view(values.shape)
