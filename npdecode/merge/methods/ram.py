"""RAM (Reinforced Agent Merging, arXiv:2601.13572): unique task-vector entries are kept,
entries changed by several models are averaged over those models (see ``_ram``).

``epsilon`` (1e-5): an entry counts as changed where ``|x_i - base| > epsilon``.
"""

from __future__ import annotations

import torch

from npdecode.merge.methods._ram import merge_ram_family
from npdecode.merge.registry import MergeMethod, register


def merge_ram(tensors, base, model_params, params, generator) -> torch.Tensor:
    """RAM merge: lambda_i = 1 for every model."""
    return merge_ram_family("ram", tensors, base, model_params, float(params["epsilon"]), None)


METHOD = register(
    MergeMethod(
        name="ram",
        func=merge_ram,
        global_params={"epsilon": 1e-5},
        requires_base=True,
        module=__name__,
        description="keep unique task-vector entries, average the shared ones",
    )
)
