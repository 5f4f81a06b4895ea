"""Evaluating recipe parameters for one tensor: filters, gradients, precedence, defaults.

A setting is a tuple of ``{filter, value}`` conditionals; the first whose filter is a
substring of the tensor name (or has no filter) wins. A gradient (a list of numbers) is
interpolated piecewise-linearly at the tensor's relative depth ``t`` in [0, 1]: value ``i`` of
``n`` sits at ``t = i / (n - 1)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from npdecode.errors import NpdecodeError
from npdecode.merge.config import Parameters, Setting, Value
from npdecode.merge.registry import REQUIRED, MergeMethod

_MISSING = object()


def interpolate_gradient(values: Sequence[float], t: float) -> float:
    """Piecewise-linear value of ``values`` (evenly spaced on [0, 1]) at ``t``."""
    if len(values) == 1:
        return float(values[0])
    return float(np.interp(t, np.linspace(0.0, 1.0, len(values)), values))


def evaluate_setting(setting: Setting, tensor_name: str, t: float) -> Any:
    """The value of ``setting`` for ``tensor_name`` at depth ``t``; ``_MISSING`` if no match."""
    for cond in setting:
        if cond.filter is None or cond.filter in tensor_name:
            return _resolve(cond.value, t)
    return _MISSING


def _resolve(value: Value, t: float) -> Any:
    if isinstance(value, tuple):
        return interpolate_gradient(value, t)
    return value


def lookup(name: str, levels: Iterable[Parameters], tensor_name: str, t: float) -> Any:
    """First level (highest precedence first) whose setting for ``name`` matches."""
    for level in levels:
        if name in level:
            value = evaluate_setting(level[name], tensor_name, t)
            if value is not _MISSING:
                return value
    return _MISSING


def check_parameter_names(method: MergeMethod, where: str, params: Mapping[str, Any]) -> None:
    """Refuse a parameter the method does not take, naming it and the place it appears."""
    known = set(method.global_params) | set(method.tensor_params)
    for key in params:
        if key not in known:
            hint = ", ".join(sorted(known)) or "none"
            raise NpdecodeError(
                f"{where}: unknown parameter {key!r} for merge_method {method.name!r} (it takes: {hint})"
            )


def _check_type(method: MergeMethod, name: str, default: Any, value: Any, tensor_name: str) -> Any:
    if default is REQUIRED and isinstance(value, str):  # required parameters are numeric
        raise NpdecodeError(
            f"parameter {name!r} of {method.name!r} must be a number, got {value!r} (tensor {tensor_name})"
        )
    if default is REQUIRED or default is None or value is None:
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise NpdecodeError(
                f"parameter {name!r} of {method.name!r} must be true/false, got {value!r} (tensor {tensor_name})"
            )
        return value
    if isinstance(default, (int, float)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise NpdecodeError(
                f"parameter {name!r} of {method.name!r} must be a number, got {value!r} (tensor {tensor_name})"
            )
        return float(value) if isinstance(default, float) else value
    return value


def resolve_global(method: MergeMethod, levels: Sequence[Parameters], tensor_name: str, t: float) -> dict[str, Any]:
    """``{name: value}`` for every global parameter of ``method``, defaults filled."""
    out = {}
    for name, default in method.global_params.items():
        value = lookup(name, levels, tensor_name, t)
        if value is _MISSING:
            if default is REQUIRED:
                raise NpdecodeError(
                    f"merge_method {method.name!r} needs parameter {name!r} (missing for tensor {tensor_name})"
                )
            value = default
        out[name] = _check_type(method, name, default, value, tensor_name)
    return out


def resolve_per_model(
    method: MergeMethod,
    model_levels: Sequence[Sequence[Parameters]],
    model_names: Sequence[str],
    tensor_name: str,
    t: float,
    base_slots: Sequence[bool] = (),
) -> dict[str, list[Any]]:
    """``{name: [value per model]}`` for every tensor parameter; ``model_levels[i]`` lists
    model ``i``'s parameter levels, highest precedence first.

    ``base_slots[i]`` marks the base model listed among ``models``: methods that need a base
    drop its slot (its task vector is zero), so a missing required parameter there is None,
    as in the usual MergeKit TIES/DARE recipes that list the base without parameters."""
    out: dict[str, list[Any]] = {}
    is_base = list(base_slots) or [False] * len(model_names)
    for name, default in method.tensor_params.items():
        values = []
        for levels, model, base_slot in zip(model_levels, model_names, is_base):
            value = lookup(name, levels, tensor_name, t)
            if value is _MISSING and base_slot and method.requires_base:
                values.append(None)
                continue
            if value is _MISSING:
                if default is REQUIRED:
                    raise NpdecodeError(
                        f"merge_method {method.name!r} needs parameter {name!r} for model {model!r} "
                        f"(missing for tensor {tensor_name})"
                    )
                value = default
            values.append(_check_type(method, name, default, value, tensor_name))
        out[name] = values
    return out
