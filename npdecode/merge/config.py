"""The merge recipe: MergeKit-style YAML, validated into a frozen pydantic schema.

A recipe names a ``merge_method``, an optional ``base_model`` and exactly one of ``models``
(whole models), ``slices`` (layer ranges, for stacking) or ``modules`` (per stack of a
multi-stack model: ``encoder``, ``decoder``, ``shared``). ``parameters`` may appear at every
level; a value is a scalar, a gradient (list of numbers interpolated over layer depth) or a
list of ``{filter, value}`` conditionals matched by substring of the tensor name.

Unknown keys and wrong types are one-line :class:`NpdecodeError` messages that name the key.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from npdecode.config import read_yaml
from npdecode.errors import NpdecodeError

Scalar = float | int | bool | str
Value = Scalar | tuple[float, ...]  # a scalar or a gradient


class _Frozen(BaseModel):
    # a docstring under a field is its description: docs/config-merge.md is generated from them
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class Conditional(_Frozen):
    """One ``{filter, value}`` entry; ``filter=None`` matches every tensor."""

    value: Value
    """A number, bool or string, or a gradient (a list of numbers interpolated over layer depth)."""
    filter: str | None = None
    """Substring of the tensor name this value applies to (None: every tensor)."""


Setting = tuple[Conditional, ...]
Parameters = dict[str, Setting]


def _normalize_value(key: str, raw: Any) -> Value:
    if isinstance(raw, (bool, int, float, str)):
        return raw
    if (
        isinstance(raw, (list, tuple))
        and raw
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in raw)
    ):
        return tuple(float(v) for v in raw)
    raise ValueError(f"parameter {key!r}: expected a number, a bool, a string or a list of numbers, got {raw!r}")


def _normalize_setting(key: str, raw: Any) -> Setting:
    """Scalar, gradient, ``{filter, value}`` or a list of those -> a tuple of conditionals."""
    if isinstance(raw, Mapping):
        raw = [raw]
    if isinstance(raw, (list, tuple)) and raw and all(isinstance(v, Mapping) for v in raw):
        out = []
        for entry in raw:
            extra = set(entry) - {"filter", "value"}
            if extra or "value" not in entry:
                raise ValueError(
                    f"parameter {key!r}: a conditional needs 'value' and optionally 'filter'"
                    + (f" (unknown key {min(extra)!r})" if extra else "")
                )
            flt = entry.get("filter")
            if flt is not None and not isinstance(flt, str):
                raise ValueError(f"parameter {key!r}: 'filter' must be a string, got {flt!r}")
            out.append(Conditional(value=_normalize_value(key, entry["value"]), filter=flt))
        return tuple(out)
    return (Conditional(value=_normalize_value(key, raw)),)


def _normalize_parameters(raw: Any) -> Parameters:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        # pydantic reports a ValueError (not a TypeError) as a validation error
        raise ValueError(f"'parameters' must be a mapping, got {raw!r}")  # noqa: TRY004
    return {str(k): _normalize_setting(str(k), v) for k, v in raw.items()}


class _WithParameters(_Frozen):
    parameters: Parameters = {}
    """Method parameters at this level: name -> scalar, gradient or list of {filter, value}
    conditionals (first match wins); a deeper level overrides a shallower one."""

    @field_validator("parameters", mode="before")
    @classmethod
    def _parse_parameters(cls, raw: Any) -> Parameters:
        return _normalize_parameters(raw)


class InputModel(_WithParameters):
    """An entry of ``models``: a model reference (path, hub id or ``model+lora``)."""

    model: str
    """Path or hub id of the checkpoint; ``path+lora_path`` applies a LoRA adapter first."""


class InputSlice(_WithParameters):
    """A source of an output slice: layers ``[start, end)`` of one model."""

    model: str
    """Path or hub id of the checkpoint the layers come from."""
    layer_range: tuple[int, int]
    """Layers [start, end) of that model."""

    @field_validator("layer_range")
    @classmethod
    def _check_range(cls, value: tuple[int, int]) -> tuple[int, int]:
        if not 0 <= value[0] < value[1]:
            raise ValueError(f"layer_range must be [start, end) with 0 <= start < end, got {list(value)}")
        return value


class OutputSlice(_WithParameters):
    sources: tuple[InputSlice, ...]
    """The input slices merged into this output slice (all spanning the same number of layers)."""
    base_model: str | None = None
    """The slice's base model (default: the recipe's)."""

    @field_validator("sources")
    @classmethod
    def _check_sources(cls, value: tuple[InputSlice, ...]) -> tuple[InputSlice, ...]:
        if not value:
            raise ValueError("a slice needs at least one source")
        lengths = {s.layer_range[1] - s.layer_range[0] for s in value}
        if len(lengths) > 1:
            raise ValueError(f"all sources of a slice must span the same number of layers, got {sorted(lengths)}")
        return value


class TokenSource(_Frozen):
    """Where a token's embedding comes from: ``zero`` or another model's token."""

    kind: Literal["zero", "model_token"]
    """zero (a zero embedding) or model_token (a token's embedding in another model)."""
    model: str | None = None
    """model_token: the model to take it from."""
    token: str | None = None
    """model_token: the token (as a string) in that model's tokenizer."""
    token_id: int | None = None
    """model_token: the token's id in that model (instead of token)."""


class TokenEmbedding(_Frozen):
    source: str | TokenSource
    """zero, a model reference (that model's row of the same token) or a {kind, model, token} source."""
    force: bool = False
    """Every model takes this source's row for the token, also where each model has its own."""


class TokenizerConfig(_Frozen):
    """``source``: ``union``, ``base`` or a model reference; per-token sources; row padding."""

    source: str = "base"
    """The output vocabulary: base (the base model's), union (every input's tokens) or a model."""
    tokens: dict[str, TokenEmbedding] = {}
    """Per-token embedding sources: token -> {source, force}."""
    pad_to_multiple_of: int | None = None
    """Pad the vocabulary (embedding rows) to a multiple of this."""


class _Body(_WithParameters):
    """What ``models``/``slices`` bodies share (the recipe and each module)."""

    models: tuple[InputModel, ...] | None = None
    """Whole models to merge: a list of {model, parameters}."""
    slices: tuple[OutputSlice, ...] | None = None
    """Layer stacking: a list of output slices, each {sources, parameters, merge_method, base_model}."""
    merge_method: str | None = None
    """A merge method (docs/merge-recipes.md, or one a plugin registers)."""
    base_model: str | None = None
    """Path or hub id of the base checkpoint (required by task-vector methods)."""


class ModuleDefinition(_Body):
    """One entry of ``modules``: a body with its own ``models`` or ``slices``."""

    @model_validator(mode="after")
    def _one_body(self) -> ModuleDefinition:
        if (self.models is None) == (self.slices is None):
            raise ValueError("a module needs exactly one of 'models' or 'slices'")
        return self


class MergeRecipe(_Body):
    """A whole recipe. ``missing_tensors`` (our extension) says how to fill a tensor some
    inputs lack: ``error`` (default), ``base`` (take the base model's) or ``zero``."""

    modules: dict[str, ModuleDefinition] | None = None
    """Per-stack bodies (encoder, decoder, shared), each with its own models or slices."""
    dtype: str | None = None
    """Computation dtype (float32, bfloat16, float16, float64); ``--dtype`` overrides it."""
    out_dtype: str | None = None
    """Dtype written (default: dtype)."""
    tokenizer_source: str | None = None
    """The older spelling of tokenizer.source."""
    tokenizer: TokenizerConfig | None = None
    """The output tokenizer and embedding rows (None: the base model's)."""
    missing_tensors: Literal["error", "base", "zero"] = "error"
    """A tensor some inputs lack: error, base (take the base model's) or zero (npdecode's addition)."""
    name: str | None = None
    """Free text."""

    @model_validator(mode="after")
    def _exactly_one_body(self) -> MergeRecipe:
        given = [k for k in ("models", "slices", "modules") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"a recipe needs exactly one of 'models', 'slices' or 'modules' (got {given or 'none'})")
        if self.tokenizer is not None and self.tokenizer_source is not None:
            raise ValueError("give either 'tokenizer' or the older 'tokenizer_source', not both")
        if self.merge_method is None and not (self.modules and all(m.merge_method for m in self.modules.values())):
            raise ValueError("'merge_method' is required")
        return self

    @property
    def tokenizer_settings(self) -> TokenizerConfig | None:
        """``tokenizer`` or the older ``tokenizer_source`` as one config (None: keep base's)."""
        if self.tokenizer is not None:
            return self.tokenizer
        if self.tokenizer_source is not None:
            return TokenizerConfig(source=self.tokenizer_source)
        return None

    def referenced_models(self) -> list[str]:
        """Every model reference in the recipe, first-seen order."""
        refs: list[str] = []
        bodies: list[_Body] = [self, *(self.modules or {}).values()]
        for body in bodies:
            for slice_ in body.slices or ():
                refs += [s.model for s in slice_.sources]
                refs += [slice_.base_model] if slice_.base_model else []
            refs += [m.model for m in body.models or ()]
            refs += [body.base_model] if body.base_model else []
        tok = self.tokenizer_settings
        if tok is not None and tok.source not in ("union", "base"):
            refs.append(tok.source)
        return list(dict.fromkeys(refs))


def _format_error(err: ValidationError, where: str) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"] if not str(p).startswith("function-"))
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown key (check its spelling against the MergeKit recipe format)"
    return f"{where}: {loc + ': ' if loc else ''}{msg}"


def parse_recipe(raw: Mapping[str, Any], where: str = "recipe") -> MergeRecipe:
    """Validate a recipe given as a mapping; errors name ``where`` and the key."""
    if not isinstance(raw, Mapping):
        raise NpdecodeError(f"{where}: a recipe must be a YAML mapping, got {type(raw).__name__}")
    try:
        return MergeRecipe.model_validate(dict(raw))
    except ValidationError as err:
        raise NpdecodeError(_format_error(err, where)) from None


def load_recipe(source: str | Path | Mapping[str, Any] | MergeRecipe) -> MergeRecipe:
    """A recipe from a YAML file path, a mapping or an existing :class:`MergeRecipe`."""
    if isinstance(source, MergeRecipe):
        return source
    if isinstance(source, Mapping):
        return parse_recipe(source)
    return parse_recipe(read_yaml(source, "recipe"), where=str(source))
