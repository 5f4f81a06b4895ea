"""The one registry of merge methods.

A method is a pure tensor function plus a description of its parameters. Each module in
``npdecode.merge.methods`` calls :func:`register` exactly once at import; ``load_builtin_methods``
imports every module of that package by listing it (not a hand-written import list), and a
test checks that each module registered itself, so a method can never be dropped by a
forgotten import. Third-party methods come from the ``npdecode.merge_methods`` entry-point
group. Registering a name twice is an error.

Contract of ``MergeMethod.func`` (called once per output tensor by the executor)::

    func(tensors, base, model_params, params, generator) -> Tensor

- ``tensors``: list of tensors, one per model listed in the recipe's ``models`` (recipe order;
  the base model is included if the recipe lists it there), same shape, computation dtype.
- ``base``: the base model's tensor, or None when the recipe has no ``base_model``. When the
  base model is also listed in ``models``, its slot in ``tensors`` must hold *the same object*
  (``tensors[i] is base``): task-vector methods (ties, dare, slerp, model_stock, …) find and
  drop the base's slot by identity, never by value, since a fine-tuned tensor may equal the
  base's. The values in ``model_params`` for that slot are ignored by those methods (MergeKit
  recipes usually give the base no ``weight``), so they may be None there.
- ``model_params``: ``{name: [value per model in tensors]}`` for every name in
  ``tensor_params``, gradients already evaluated for this tensor, defaults filled.
- ``params``: ``{name: value}`` for every name in ``global_params``, defaults filled.
- ``generator``: a seeded ``torch.Generator`` on the tensors' device (for DARE/DELLA…), or None.
Returns the merged tensor (same shape and dtype as the inputs). Bad inputs (shape mismatch,
missing base where ``requires_base``, wrong number of models) raise ``NpdecodeError`` with a
one-line message; the executor may prefix the tensor name.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

from npdecode.errors import NpdecodeError


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()
"""Default marker of a parameter the recipe must give."""

ENTRY_POINT_GROUP = "npdecode.merge_methods"


@dataclass(frozen=True)
class MergeMethod:
    name: str
    func: Callable[..., Any]
    global_params: Mapping[str, Any] = field(default_factory=dict)  # name -> default or REQUIRED
    tensor_params: Mapping[str, Any] = field(default_factory=dict)  # per-model: name -> default
    requires_base: bool = False
    uses_random: bool = False
    module: str = ""
    description: str = ""


_REGISTRY: dict[str, MergeMethod] = {}
_loaded = False


def register(method: MergeMethod) -> MergeMethod:
    """Add ``method``; a name already taken is refused."""
    if method.name in _REGISTRY:
        raise ValueError(
            f"merge method {method.name!r} is registered twice ({_REGISTRY[method.name].module} and {method.module})"
        )
    _REGISTRY[method.name] = method
    return method


def load_builtin_methods() -> None:
    """Import every module of ``npdecode.merge.methods`` and the entry-point plugins (once)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    from npdecode.merge import methods

    for info in pkgutil.iter_modules(methods.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{methods.__name__}.{info.name}")
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        obj = ep.load()
        if not isinstance(obj, MergeMethod):
            raise NpdecodeError(
                f"entry point {ep.name!r} of group {ENTRY_POINT_GROUP!r} ({ep.value}) is a "
                f"{type(obj).__name__}, not a MergeMethod; fix or uninstall that plugin"
            )
        register(obj)  # a name clash with a built-in or another plugin is refused


def get_method(name: str) -> MergeMethod:
    """The method called ``name``; an unknown name is a one-line error listing the known ones."""
    load_builtin_methods()
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise NpdecodeError(f"unknown merge_method {name!r}; known methods: {known}") from None


def all_methods() -> dict[str, MergeMethod]:
    """Every registered method by name."""
    load_builtin_methods()
    return dict(_REGISTRY)
