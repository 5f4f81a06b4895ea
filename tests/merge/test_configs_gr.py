"""Example recipes in configs/ are valid; GR checkpoints merge without their CE table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from npdecode.merge.api import merge_models
from npdecode.merge.config import load_recipe
from npdecode.merge.plan import _units
from tests.merge.helpers import read_tensors

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("merge-*.yml"))


def test_there_are_example_recipes():
    assert len(CONFIGS) >= 6


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_example_recipe_is_valid(path):
    recipe = load_recipe(path)
    units = _units(recipe)  # methods exist, parameter names are theirs, bases given where needed
    assert units


def test_gr_checkpoints_merge_backbone_only(checkpoints, tmp_path):
    import shutil

    gr = []
    for seed in (0, 1):
        d = tmp_path / f"gr{seed}"
        shutil.copytree(checkpoints("t5", seed), d)
        save_file({"ce": torch.randn(9, 16), "ce_token_ids": torch.arange(9)}, str(d / "npdecode_ce.safetensors"))
        (d / "npdecode.json").write_text(json.dumps({"kind": "np"}))
        gr.append(d)
    out = tmp_path / "merged"
    merge_models(
        load_recipe(Path(__file__).resolve().parents[2] / "configs" / "merge-gr-checkpoints.yml").model_copy(
            update={
                "base_model": str(gr[0]),
                "models": tuple(
                    m.model_copy(update={"model": str(g)})
                    for m, g in zip(load_recipe(CONFIGS[0].parent / "merge-gr-checkpoints.yml").models, gr)
                ),
            }
        ),
        out,
    )
    assert not (out / "npdecode_ce.safetensors").exists() and not (out / "npdecode.json").exists()
    merged = read_tensors(out)
    assert "ce" not in merged and set(merged) == set(read_tensors(gr[0])) - {"ce", "ce_token_ids"}
