"""Python API of the merge engine (the CLI is a thin layer over it).

``merge_models(recipe, out)`` merges checkpoints on disk into ``out``;
``merge_state_dicts(recipe, state_dicts)`` merges in-memory state dicts whose keys are the
model names the recipe uses. Both validate everything before computing anything.
"""

from __future__ import annotations

import dataclasses
import secrets
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from npdecode.atomic import atomic_dir, stale_temp_dirs
from npdecode.device import resolve_device
from npdecode.errors import NpdecodeError
from npdecode.integrity import write_checksums
from npdecode.merge.config import MergeRecipe, load_recipe
from npdecode.merge.executor import run_tasks
from npdecode.merge.plan import MergeOptions, MergePlan, build_plan
from npdecode.merge.tensor_io import DictReader, ModelSource
from npdecode.merge.writer import (
    DictSink,
    SafetensorsSink,
    TensorSpec,
    assign_shards,
    copy_side_files,
    write_config,
    write_recipe_and_card,
)


@dataclass(frozen=True)
class MergeReport:
    out: Path | None
    tensors: int
    bytes: int
    shards: int
    warnings: list[str]


def plan_merge(recipe: str | Path | Mapping[str, Any] | MergeRecipe, **options: Any) -> MergePlan:
    """Validate ``recipe`` and its inputs; returns the plan (this is ``--dry-run``)."""
    return build_plan(load_recipe(recipe), MergeOptions(**options))


def _specs(plan: MergePlan) -> list[TensorSpec]:
    return [TensorSpec(t.out_name, t.shape, t.out_dtype) for t in plan.tasks]


def merge_models(
    recipe: str | Path | Mapping[str, Any] | MergeRecipe,
    out: str | Path,
    *,
    dry_run: bool = False,
    overwrite: bool = False,
    **options: Any,
) -> MergeReport:
    """Merge the checkpoints of ``recipe`` into the directory ``out`` (atomically).

    ``options`` are :class:`MergeOptions` fields (device, dtype, random_seed, allow_crimes,
    trust_remote_code, copy_tokenizer, threads, out_shard_size, progress).
    """
    opts = MergeOptions(**options)
    if opts.random_seed is None:  # drawn once, used for every tensor, recorded with the output
        opts = dataclasses.replace(opts, random_seed=secrets.randbelow(2**31))
    recipe = load_recipe(recipe)
    out = Path(out)
    if out.exists() and not overwrite and not dry_run:
        raise NpdecodeError(f"output directory {out} already exists; remove it or choose another")
    if not dry_run:
        for stale in stale_temp_dirs(out):  # a merge killed before it could clean up (SIGKILL, power loss)
            shutil.rmtree(stale, ignore_errors=True)
            print(f"removed {stale}, left by an interrupted merge into {out}", file=sys.stderr)
    plan = build_plan(recipe, opts)
    device = torch.device(resolve_device(opts.device))
    specs = _specs(plan)
    if dry_run:
        shards = len(assign_shards(specs, opts.out_shard_size))
        return MergeReport(None, len(specs), sum(s.nbytes for s in specs), shards, plan.warnings)
    for warning in plan.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        sink = SafetensorsSink(tmp, specs, opts.out_shard_size)
        try:
            with _Progress(len(specs), opts.progress) as tick:
                run_tasks(plan, sink.write, device, opts.threads, tick)
        finally:
            sink.close()
        sink.write_index(tmp)
        _write_metadata(plan, tmp, opts)
        write_checksums(tmp)  # last: size + digest of every file above (npdecode verify, loading)
    return MergeReport(out, len(specs), sink.total_bytes, len(sink.files), plan.warnings)


def _write_metadata(plan: MergePlan, tmp: Path, opts: MergeOptions) -> None:
    out_dtypes = {t.out_dtype for t in plan.tasks if t.out_dtype.is_floating_point}
    write_config(tmp, plan.config, out_dtypes.pop() if len(out_dtypes) == 1 else None)
    layout = plan.sources[plan.layout_ref]
    copy_side_files(layout.path, tmp, tokenizer=opts.copy_tokenizer and plan.vocab is None)
    if opts.copy_tokenizer and plan.vocab is not None:
        plan.vocab.tokenizer.save_pretrained(str(tmp))
    method = plan.recipe.merge_method or "per-module"
    dump = plan.recipe.model_dump(mode="json", exclude_none=True, exclude_defaults=True)
    write_recipe_and_card(tmp, _plain(dump), method, list(plan.sources), random_seed=opts.random_seed)


def _plain(value: Any) -> Any:
    """The recipe dump with conditionals collapsed back to MergeKit's short forms."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        if len(value) == 1 and isinstance(value[0], dict) and set(value[0]) == {"value"}:
            return _plain(value[0]["value"])
        return [_plain(v) for v in value]
    return value


class _Progress:
    """A tqdm bar per tensor when ``enabled``; a no-op otherwise."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled, self.bar = total, enabled, None

    def __enter__(self):
        if self.enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, unit="tensor", desc="merging")
            return self.bar.update
        return None

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()


def merge_state_dicts(
    recipe: Mapping[str, Any] | MergeRecipe,
    state_dicts: Mapping[str, Mapping[str, torch.Tensor]],
    configs: Mapping[str, Mapping[str, Any]] | None = None,
    **options: Any,
) -> dict[str, torch.Tensor]:
    """Merge in-memory state dicts; the recipe's model names are the keys of ``state_dicts``.

    ``configs`` (optional, per model) let tied weights be detected as for checkpoints.
    """
    opts = MergeOptions(**options)
    recipe = load_recipe(recipe)
    sources = {
        ref: ModelSource(ref=ref, reader=DictReader(sd), config=dict((configs or {}).get(ref, {})))
        for ref, sd in state_dicts.items()
    }
    plan = build_plan(recipe, opts, sources)
    sink = DictSink()
    run_tasks(plan, sink.write, torch.device(resolve_device(opts.device)), opts.threads)
    return {t.out_name: sink.tensors[t.out_name] for t in plan.tasks}
