"""Input checks shared by the merge methods: base model slot, shapes, parameter lookup.

The executor passes ``tensors`` in recipe order and, when the recipe lists the base model among
``models``, puts the very tensor object it passes as ``base`` in that model's slot (see
``npdecode.merge.registry``). Methods that work on task vectors find and drop that slot by
identity, never by value: a fine-tuned model whose tensor happens to equal the base's (frozen
embeddings, say) is still a model with a zero task vector, as in MergeKit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from npdecode.errors import NpdecodeError


def require_base(method: str, base: torch.Tensor | None) -> torch.Tensor:
    """``base``, or a one-line error saying the recipe needs ``base_model``."""
    if base is None:
        raise NpdecodeError(f"merge method {method!r} needs a base model: set `base_model:` in the recipe")
    return base


def split_base(
    tensors: Sequence[torch.Tensor], base: torch.Tensor | None, model_params: Mapping[str, Sequence[Any]]
) -> tuple[list[torch.Tensor], dict[str, list[Any]]]:
    """The non-base tensors and their per-model parameters (the base's own slot removed)."""
    keep = [i for i, t in enumerate(tensors) if base is None or t is not base]
    params = {name: [values[i] for i in keep] for name, values in model_params.items()}
    return [tensors[i] for i in keep], params


def check_shapes(method: str, tensors: Sequence[torch.Tensor], base: torch.Tensor | None = None) -> None:
    """Every input (and the base) has one shape and one dtype; else a one-line error."""
    every = [*tensors, *([base] if base is not None else [])]
    if not every:
        raise NpdecodeError(f"merge method {method!r} got no input tensors")
    shapes = {tuple(t.shape) for t in every}
    if len(shapes) > 1:
        listed = ", ".join(str(list(s)) for s in sorted(shapes))
        raise NpdecodeError(
            f"merge method {method!r}: input tensors have different shapes ({listed}); "
            "merge only checkpoints of the same architecture and vocabulary"
        )
    dtypes = {t.dtype for t in every}
    if len(dtypes) > 1:
        raise NpdecodeError(f"merge method {method!r}: input tensors have different dtypes {sorted(map(str, dtypes))}")


def require_count(method: str, tensors: Sequence[torch.Tensor], count: int, what: str) -> None:
    """Exactly ``count`` inputs, else an error that says which models the method takes."""
    if len(tensors) != count:
        raise NpdecodeError(f"merge method {method!r} takes {what}; got {len(tensors)} such models")


def scalars(method: str, model_params: Mapping[str, Sequence[Any]], name: str, count: int) -> list[float]:
    """The per-model values of parameter ``name`` as floats (one per input)."""
    values = model_params.get(name)
    if values is None or len(values) != count:
        raise NpdecodeError(f"merge method {method!r}: parameter {name!r} must be given for each of {count} models")
    out = []
    for v in values:
        if v is None:
            raise NpdecodeError(f"merge method {method!r}: parameter {name!r} is missing for a model")
        out.append(float(v))
    return out


def accumulation_dtype(t: torch.Tensor) -> torch.dtype:
    """Dtype for scalar reductions (norms, dots): half types reduce in float32."""
    return torch.float32 if t.dtype in (torch.float16, torch.bfloat16) else t.dtype
