"""RAM+ tensor-local (arXiv:2601.13572): RAM with each model's unique entries scaled by
``lambda_i = 1 + r * clamp(rho_i, 0, alpha)``, ``rho_i = S_i / max(U_i, epsilon)``, where ``S_i``
and ``U_i`` count model ``i``'s shared and unique active entries in this tensor.

Defaults as MergeKit: ``r`` 0.1, ``alpha`` 0.2, ``epsilon`` 1e-5 (also the activity threshold).
"""

from __future__ import annotations

import torch

from npdecode.merge.methods._ram import merge_ram_family
from npdecode.merge.registry import MergeMethod, register


def merge_ramplus_tl(tensors, base, model_params, params, generator) -> torch.Tensor:
    """RAM with the tensor-local unique-entry scales of the module docstring."""
    r, alpha = float(params["r"]), float(params["alpha"])
    epsilon = float(params["epsilon"])

    def scales(shared: torch.Tensor, unique: torch.Tensor) -> torch.Tensor:
        rho = shared / unique.clamp_min(epsilon)
        return 1 + r * rho.clamp(0, alpha)

    return merge_ram_family("ramplus_tl", tensors, base, model_params, epsilon, scales)


METHOD = register(
    MergeMethod(
        name="ramplus_tl",
        func=merge_ramplus_tl,
        global_params={"r": 0.1, "alpha": 0.2, "epsilon": 1e-5},
        requires_base=True,
        module=__name__,
        description="RAM with tensor-local rescaling of each model's unique entries",
    )
)
