"""Nearswap: move the base toward the other model where the two are already close.

Per entry, ``w = clamp(t / |base - other|, 0, 1)`` and ``out = w * other + (1 - w) * base``
(entries where the two are equal keep the common value).
"""

from __future__ import annotations

import torch

from npdecode.merge.methods import _mixing
from npdecode.merge.methods._inputs import check_shapes, require_base, require_count, split_base
from npdecode.merge.registry import REQUIRED, MergeMethod, register


def merge_nearswap(tensors, base, model_params, params, generator) -> torch.Tensor:
    """The entrywise interpolation of the module docstring."""
    base = require_base("nearswap", base)
    others, _ = split_base(tensors, base, model_params)
    check_shapes("nearswap", others, base)
    if not others:
        return base.clone()
    require_count("nearswap", others, 1, "exactly two models: the base_model and one other")
    t = float(params["t"])
    fb, fo = base.reshape(-1), others[0].reshape(-1)
    out = torch.empty(base.shape, dtype=base.dtype, device=base.device)
    flat_out = out.view(-1)
    # block by block: the temporaries are block-sized, the output the one full-size tensor
    for start, stop in _mixing.blocks(fb.numel(), _mixing.block_size(base.device)):
        b, o = fb[start:stop], fo[start:stop]
        diff = (b - o).abs()
        w = torch.where(diff > 0, (t / diff).clamp(0, 1), torch.ones_like(diff))
        torch.lerp(b, o, w, out=flat_out[start:stop])
    return out


METHOD = register(
    MergeMethod(
        name="nearswap",
        func=merge_nearswap,
        global_params={"t": REQUIRED},
        requires_base=True,
        module=__name__,
        description="interpolate toward the other model where it is close to the base",
    )
)
