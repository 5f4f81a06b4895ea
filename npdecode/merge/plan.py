"""Planning a merge: every output tensor, its inputs and parameters, validated before any write.

The plan is built from file headers only (no tensor data is read): names, shapes and dtypes of
every input, the method and its parameters per tensor, layer renumbering for ``slices``, the
output vocabulary. Every user mistake (unknown method or parameter, missing base, shape or
vocabulary mismatch, a tensor some inputs lack) surfaces here as one :class:`NpdecodeError`.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from npdecode.errors import NpdecodeError
from npdecode.merge import architecture as arch
from npdecode.merge.config import InputModel, InputSlice, MergeRecipe, OutputSlice, Parameters
from npdecode.merge.lora import LoraReader, split_lora_ref
from npdecode.merge.parameters import check_parameter_names, resolve_global, resolve_per_model
from npdecode.merge.registry import MergeMethod, get_method
from npdecode.merge.tensor_io import ModelSource, open_model_dir, resolve_model_dir
from npdecode.merge.tokenizer import VocabPlan, check_same_vocab, plan_vocab

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64,
          "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}  # fmt: skip


@dataclass(frozen=True)
class MergeOptions:
    """Run options (the CLI flags); ``dtype`` overrides the recipe's computation dtype."""

    device: str = "auto"  # auto: CUDA when available, else CPU (as every other command)
    dtype: str | None = None
    random_seed: int | None = None
    allow_crimes: bool = False
    trust_remote_code: bool = False
    copy_tokenizer: bool = True
    threads: int = 1
    out_shard_size: int = 5 * 1024**3
    progress: bool = False


@dataclass(frozen=True)
class TensorRef:
    """Tensor ``name`` of model ``ref``; ``name=None`` means zeros of the output shape."""

    ref: str
    name: str | None


@dataclass
class TensorTask:
    out_name: str
    method: MergeMethod
    inputs: list[TensorRef]
    base: TensorRef | None
    model_params: dict[str, list[Any]]
    params: dict[str, Any]
    shape: tuple[int, ...]
    out_dtype: torch.dtype
    vocab_axis: int | None = None
    copy: bool = False  # non-float tensors (buffers) are copied from the first input
    seed: int = 0


@dataclass
class MergePlan:
    recipe: MergeRecipe
    sources: dict[str, ModelSource]
    tasks: list[TensorTask]
    layout_ref: str
    config: dict[str, Any]
    compute_dtype: torch.dtype
    vocab: VocabPlan | None = None
    warnings: list[str] = field(default_factory=list)


class _Model:
    """A model's tensor names with tied aliases resolved (config + checkpoint)."""

    def __init__(self, source: ModelSource):
        self.source = source
        keys = source.reader.keys()
        self.physical = set(keys)
        self.aliases = arch.tied_aliases(source.config, keys, source.reader.shared_storage_groups())
        self.canonical = [k for k in keys if k not in self.aliases]
        self.shapes = {k: source.reader.shape(k) for k in keys}
        self.shapes.update({a: self.shapes[s] for a, s in self.aliases.items()})
        self.rows = arch.vocab_rows(source.config, self.shapes)

    def has(self, name: str) -> bool:
        return name in self.physical or name in self.aliases

    def resolve(self, name: str) -> str:
        return name if name in self.physical else self.aliases[name]


def open_source(ref: str, trust_remote_code: bool = False) -> ModelSource:
    """Open ``ref`` (directory, hub id or ``model+lora``) lazily."""
    model_ref, adapter = split_lora_ref(ref)
    source = open_model_dir(ref, resolve_model_dir(model_ref))
    if adapter is not None:
        source.reader = LoraReader(source.reader, resolve_model_dir(adapter))
    return source


def parse_dtype(name: str | None, where: str) -> torch.dtype | None:
    if name is None:
        return None
    if name not in DTYPES:
        raise NpdecodeError(f"{where}: unknown dtype {name!r} (use one of {', '.join(DTYPES)})")
    return DTYPES[name]


@dataclass
class _Unit:
    """One body of the recipe (the recipe itself, or a module) in planning form."""

    scope: str | None
    method: MergeMethod
    base: str | None
    slices: list[OutputSlice] | None  # None: whole models
    models: list[InputModel] | None
    levels: list[Parameters]


def _units(recipe: MergeRecipe) -> list[_Unit]:
    bodies = list(recipe.modules.items()) if recipe.modules else [(None, recipe)]
    units = []
    for scope, body in bodies:
        if scope is not None and scope not in ("encoder", "decoder", "shared"):
            raise NpdecodeError(f"modules.{scope}: unknown module (use encoder, decoder or shared)")
        where = f"modules.{scope}" if scope else "recipe"
        method = get_method(body.merge_method or recipe.merge_method)  # type: ignore[arg-type]
        levels = [body.parameters] + ([recipe.parameters] if body is not recipe else [])
        base = body.base_model or recipe.base_model
        unit = _Unit(scope, method, base, list(body.slices) if body.slices else None,
                     list(body.models) if body.models else None, levels)  # fmt: skip
        for i, level in enumerate(levels):
            check_parameter_names(method, f"{where if i == 0 else 'recipe'}.parameters", level)
        for i, m in enumerate(unit.models or ()):
            check_parameter_names(method, f"{where}.models.{i} ({m.model}).parameters", m.parameters)
        for i, sl in enumerate(unit.slices or ()):
            check_parameter_names(method, f"{where}.slices.{i}.parameters", sl.parameters)
            for j, src in enumerate(sl.sources):
                check_parameter_names(method, f"{where}.slices.{i}.sources.{j}.parameters", src.parameters)
        bases = [sl.base_model or base for sl in unit.slices] if unit.slices else [base]
        if method.requires_base and not all(bases):
            raise NpdecodeError(f"{where}: merge_method {method.name!r} requires a base_model; add 'base_model:'")
        units.append(unit)
    return units


class _Planner:
    def __init__(self, recipe: MergeRecipe, sources: dict[str, ModelSource], options: MergeOptions):
        self.recipe, self.options = recipe, options
        self.models = {ref: _Model(src) for ref, src in sources.items()}
        self.sources = sources
        self.tasks: list[TensorTask] = []
        self.warnings: list[str] = []
        self.compute_dtype = parse_dtype(options.dtype or recipe.dtype, "dtype") or torch.float32
        self.out_dtype = parse_dtype(recipe.out_dtype, "out_dtype") or parse_dtype(
            options.dtype or recipe.dtype, "dtype"
        )
        self.layer_counts: dict[str, tuple[int, int]] = {}
        self.used: dict[str, set[str]] = {ref: set() for ref in sources}

    # -- tasks ------------------------------------------------------------------------------
    def add_task(self, unit: _Unit, out_name: str, inputs: list[TensorRef], base: TensorRef | None,
                 model_levels: list[list[Parameters]], slice_levels: list[Parameters], t: float) -> None:  # fmt: skip
        if base is not None and not self.models[base.ref].has(base.name or ""):
            raise NpdecodeError(f"base model {base.ref!r} has no tensor {base.name!r} (needed for {out_name!r})")
        base = base and TensorRef(base.ref, self.models[base.ref].resolve(base.name))  # type: ignore[arg-type]
        inputs = [self._fill(r, base, out_name) for r in inputs]
        # physical names: a tied alias (lm_head of a tied model) reads its source tensor
        inputs = [r if r.name is None else TensorRef(r.ref, self.models[r.ref].resolve(r.name)) for r in inputs]
        refs = [r for r in [*inputs, base] if r is not None and r.name is not None]
        for r in refs:
            self.used[r.ref].add(r.name)  # type: ignore[arg-type]
        layout = self.models[refs[0].ref]
        shape = layout.shapes[refs[0].name]  # type: ignore[index]
        axis = arch.vocab_axis(out_name, shape, layout.rows)
        shapes = [(r.ref, self.models[r.ref].shapes[r.name]) for r in refs]  # type: ignore[index]
        if axis is not None:
            if self.recipe.tokenizer_settings is None:
                check_same_vocab(out_name, shapes, axis)
            shapes = [(ref, s[:axis] + s[axis + 1 :]) for ref, s in shapes]
        if len({s for _, s in shapes}) > 1:
            listing = ", ".join(f"{ref}: {list(s)}" for ref, s in shapes)
            raise NpdecodeError(f"tensor {out_name!r} has different shapes across inputs ({listing})")
        dtype_ref = base or refs[0]  # the output keeps the base's dtype unless the recipe says otherwise
        dtype = self.models[dtype_ref.ref].source.reader.dtype(dtype_ref.name)  # type: ignore[arg-type]
        names = [r.ref for r in inputs]
        self.tasks.append(TensorTask(
            out_name=out_name, method=unit.method, inputs=inputs, base=base,
            model_params=resolve_per_model(unit.method, model_levels, names, out_name, t,
                                           base_slots=[base is not None and r.ref == base.ref for r in inputs]),
            params=resolve_global(unit.method, slice_levels, out_name, t),
            shape=tuple(shape), out_dtype=self.out_dtype or dtype, vocab_axis=axis,
            copy=not dtype.is_floating_point, seed=self._seed(out_name),
        ))  # fmt: skip

    def _fill(self, r: TensorRef, base: TensorRef | None, out_name: str) -> TensorRef:
        if r.name is not None and self.models[r.ref].has(r.name):
            return r
        policy = self.recipe.missing_tensors
        if policy == "error":
            raise NpdecodeError(
                f"model {r.ref!r} has no tensor {r.name!r} (needed for {out_name!r}); set "
                "'missing_tensors: base' or 'missing_tensors: zero' in the recipe to fill it"
            )
        if policy == "base":
            if base is None or not self.models[base.ref].has(base.name or ""):
                raise NpdecodeError(f"missing_tensors: base needs a base_model that has {r.name!r}")
            self.warnings.append(f"{r.ref}: {r.name} missing, filled from base {base.ref}")
            return base
        self.warnings.append(f"{r.ref}: {r.name} missing, filled with zeros")
        return TensorRef(r.ref, None)

    def _seed(self, name: str) -> int:
        seed = self.options.random_seed
        if seed is None:
            return int(torch.randint(0, 2**62, (1,)).item())
        return (seed * 1_000_003 + zlib.crc32(name.encode())) % 2**62

    # -- units ------------------------------------------------------------------------------
    def plan_unit(self, unit: _Unit) -> None:
        layout_ref = unit.base or (unit.models[0].model if unit.models else unit.slices[0].sources[0].model)  # type: ignore[index]
        layout = self.models[layout_ref]
        names = [n for n in layout.canonical if unit.scope is None or arch.module_of(n) == unit.scope]
        if unit.models is not None:
            self._plan_models(unit, names)
        else:
            self._plan_slices(unit, names, layout)

    def _plan_models(self, unit: _Unit, names: list[str]) -> None:
        counts = arch.stacks(names)
        model_levels = [[m.parameters, *unit.levels] for m in unit.models]  # type: ignore[union-attr]
        for name in names:
            layer = arch.parse_layer(name)
            n = counts[layer.stack] if layer else 1
            t = (layer.index / (n - 1) if n > 1 else 1.0) if layer else 0.0
            inputs = [TensorRef(m.model, name) for m in unit.models]  # type: ignore[union-attr]
            base = TensorRef(unit.base, name) if unit.base else None
            self.add_task(unit, name, inputs, base, model_levels, unit.levels, t)

    def _plan_slices(self, unit: _Unit, names: list[str], layout: _Model) -> None:
        slices = unit.slices or []
        stack_sizes = arch.stacks(names)
        if len(stack_sizes) != 1:
            raise NpdecodeError(
                f"'slices' needs exactly one layer stack in scope, found {sorted(stack_sizes) or 'none'}; "
                "use 'modules' (encoder / decoder / shared) for encoder-decoder models"
            )
        ((stack, old_count),) = stack_sizes.items()
        for name in names:
            if arch.parse_layer(name) is None:
                sl = slices[0] if arch.is_pre_layer(name) else slices[-1]
                self._slice_task(unit, sl, name, lambda s, name=name: name, 0.0)
        # Position-bound tensors exist in some layers only (T5's relative_attention_bias in
        # layer 0): output layer i has those the layout's layer i has, taken from the lowest
        # layer of each source that has them; the other tensors follow the source layer.
        layout_rests = _layer_rests(layout, stack)
        bound = set().union(*layout_rests.values()) - set.intersection(*layout_rests.values())
        out_index = 0
        for sl in slices:
            ref_src = next((s for s in sl.sources if s.model == (sl.base_model or unit.base)), sl.sources[0])
            length = sl.sources[0].layer_range[1] - sl.sources[0].layer_range[0]
            ref_rests = _layer_rests(self.models[ref_src.model], stack)
            for o in range(length):
                src_idx = ref_src.layer_range[0] + o
                if src_idx not in ref_rests:
                    raise NpdecodeError(
                        f"model {ref_src.model!r} has no layer {src_idx} in {stack!r} (layer_range too long)"
                    )
                t = o / (length - 1) if length > 1 else 1.0
                for rest in sorted(ref_rests[src_idx] - bound):
                    out_name = f"{stack}.{out_index}.{rest}"
                    self._slice_task(
                        unit,
                        sl,
                        out_name,
                        lambda s, o=o, rest=rest: f"{stack}.{s.layer_range[0] + o}.{rest}",
                        t,
                        ref_src,
                    )
                for rest in sorted(layout_rests.get(out_index, set()) & bound):
                    out_name = f"{stack}.{out_index}.{rest}"
                    self._slice_task(
                        unit, sl, out_name, lambda s, rest=rest: self._lowest_layer(s.model, stack, rest), t, ref_src
                    )
                out_index += 1
        self.layer_counts[stack] = (old_count, out_index)

    def _lowest_layer(self, ref: str, stack: str, rest: str) -> str:
        layers = [i for i, rests in _layer_rests(self.models[ref], stack).items() if rest in rests]
        return f"{stack}.{min(layers) if layers else 0}.{rest}"

    def _slice_task(self, unit: _Unit, sl: OutputSlice, out_name: str, name_in, t: float,
                    ref_src: InputSlice | None = None) -> None:  # fmt: skip
        levels = [sl.parameters, *unit.levels]
        inputs = [TensorRef(s.model, name_in(s)) for s in sl.sources]
        base_ref = sl.base_model or unit.base
        base = None
        if base_ref:
            src = next((s for s in sl.sources if s.model == base_ref), ref_src or sl.sources[0])
            base = TensorRef(base_ref, name_in(src))
        self.add_task(unit, out_name, inputs, base, [[s.parameters, *levels] for s in sl.sources], levels, t)

    # -- checks -----------------------------------------------------------------------------
    def check_unused(self, units: list[_Unit]) -> None:
        """No tensor of an input is dropped silently: every unused one is an error or a warning.

        Within each unit's scope; layers outside a slice's ``layer_range`` are left out on purpose.
        """
        outputs = {t.out_name for t in self.tasks}
        for unit in units:
            if unit.models is not None:
                refs = {m.model for m in unit.models}
            else:
                refs = {s.model for sl in unit.slices or () for s in sl.sources}
            for ref in refs | ({unit.base} if unit.base else set()):
                model = self.models[ref]
                for name in model.canonical:
                    if unit.scope is not None and arch.module_of(name) != unit.scope:
                        continue
                    if name in self.used[ref]:
                        continue
                    # slices choose their layers and take non-layer tensors from the first or last slice
                    if unit.slices is not None and (arch.parse_layer(name) or name in outputs):
                        continue
                    msg = f"model {ref!r} has tensor {name!r} that the output (laid out like the base) lacks"
                    if self.recipe.missing_tensors == "error":
                        raise NpdecodeError(msg + "; merge models of one architecture, or set 'missing_tensors'")
                    self.warnings.append(msg + ": not merged")


def _probe_methods(tasks: list[TensorTask]) -> None:
    """Call each distinct method once on small random tensors with a real task's inputs and
    parameters, so that user mistakes the method itself detects (wrong number of models,
    weights summing to zero...) are reported before anything is written."""
    seen: set[int] = set()
    g = torch.Generator().manual_seed(0)
    for task in tasks:
        key = id(task.method)
        if key in seen or task.copy:
            continue
        seen.add(key)
        fake = {r: torch.randn(4, 4, generator=g) for r in dict.fromkeys([*task.inputs, task.base]) if r is not None}
        tensors = [fake[r] for r in task.inputs]
        base = fake[task.base] if task.base is not None else None
        try:
            task.method.func(tensors, base, task.model_params, task.params, torch.Generator().manual_seed(0))
        except NpdecodeError as err:
            raise NpdecodeError(f"{task.out_name}: {err}") from None
        except Exception:  # noqa: BLE001, S110 - a probe on random data; the real run reports real failures
            pass


def _layer_rests(model: _Model, stack: str) -> dict[int, set[str]]:
    """``{layer index: {rest of name}}`` of one stack of ``model``."""
    out: dict[int, set[str]] = {}
    for name in model.canonical:
        layer = arch.parse_layer(name)
        if layer is not None and layer.stack == stack:
            out.setdefault(layer.index, set()).add(layer.rest)
    return out


def _check_architectures(sources: Mapping[str, ModelSource], allow_crimes: bool) -> None:
    kinds = {
        ref: tuple(src.config.get("architectures") or [src.config.get("model_type", "?")])
        for ref, src in sources.items()
    }
    if len(set(kinds.values())) > 1 and not allow_crimes:
        listing = ", ".join(f"{r}: {'/'.join(k)}" for r, k in kinds.items())
        raise NpdecodeError(f"models have different architectures ({listing}); pass --allow-crimes to merge anyway")


def build_plan(recipe: MergeRecipe, options: MergeOptions, sources: dict[str, ModelSource] | None = None) -> MergePlan:
    """Validate ``recipe`` against its inputs and list every output tensor (no data read)."""
    units = _units(recipe)
    refs = recipe.referenced_models()
    if sources is None:
        sources = {ref: open_source(ref, options.trust_remote_code) for ref in refs}
    missing = [r for r in refs if r not in sources]
    if missing:
        raise NpdecodeError(f"recipe refers to model {missing[0]!r}, which was not given")
    _check_architectures(sources, options.allow_crimes)
    planner = _Planner(recipe, sources, options)
    for unit in units:
        planner.plan_unit(unit)
    if recipe.modules:
        layout = _layout_ref(recipe, units)
        uncovered = {arch.module_of(n) for n in planner.models[layout].canonical} - set(recipe.modules)
        if uncovered:
            raise NpdecodeError(
                f"modules: the model has tensors in module(s) {sorted(uncovered)} that no module entry covers"
            )
    planner.check_unused(units)
    _probe_methods(planner.tasks)
    layout_ref = _layout_ref(recipe, units)
    config = arch.update_layer_counts(sources[layout_ref].config, planner.layer_counts)
    vocab = None
    settings = recipe.tokenizer_settings
    if settings is not None and any(t.vocab_axis is not None for t in planner.tasks):
        involved = {r.ref for t in planner.tasks for r in [*t.inputs, t.base] if r is not None}
        if settings.source not in ("union", "base"):
            involved.add(settings.source)
        rows = {ref: planner.models[ref].rows for ref in involved}
        vocab = plan_vocab(settings, {r: sources[r] for r in involved}, layout_ref, rows, options.trust_remote_code)  # type: ignore[arg-type]
        for task in planner.tasks:
            if task.vocab_axis is not None:
                shape = list(task.shape)
                shape[task.vocab_axis] = vocab.out_rows
                task.shape = tuple(shape)
        _set_vocab_size(config, planner.models[layout_ref].rows, vocab.out_rows)
    return MergePlan(recipe, sources, planner.tasks, layout_ref, config, planner.compute_dtype, vocab, planner.warnings)


def _layout_ref(recipe: MergeRecipe, units: list[_Unit]) -> str:
    first = units[0]
    return (
        recipe.base_model or first.base or (first.models[0].model if first.models else first.slices[0].sources[0].model)
    )  # type: ignore[index]


def _set_vocab_size(config: dict[str, Any], old: int | None, new: int) -> None:
    config["vocab_size"] = new
    for sub in config.values():  # nested encoder/decoder configs (bert2bert)
        if isinstance(sub, dict) and sub.get("vocab_size") == old:
            sub["vocab_size"] = new
