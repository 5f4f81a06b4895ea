"""Passthrough: the single input tensor, multiplied by ``scale`` when one is given.

For layer stacking (``slices``) and for scaling named tensors with a filtered ``scale``.
"""

from __future__ import annotations

import torch

from npdecode.errors import NpdecodeError
from npdecode.merge.methods._inputs import check_shapes
from npdecode.merge.registry import MergeMethod, register


def merge_passthrough(tensors, base, model_params, params, generator) -> torch.Tensor:
    """``tensors[0]`` (times ``scale``); more than one input is an error."""
    if len(tensors) != 1:
        raise NpdecodeError(
            f"passthrough takes exactly one model per output tensor, got {len(tensors)}; "
            "use slices with one source each"
        )
    check_shapes("passthrough", tensors)
    scale = (model_params["scale"] or [None])[0]
    if scale is None:
        return tensors[0]
    return tensors[0] * float(scale)


METHOD = register(
    MergeMethod(
        name="passthrough",
        func=merge_passthrough,
        tensor_params={"scale": None},
        module=__name__,
        description="copy one model's tensor, optionally scaled",
    )
)
