"""Bad recipes are one-line errors raised before any output exists; interrupted merges and
dry runs leave nothing that looks like a checkpoint."""

from __future__ import annotations

import pydantic
import pytest
import yaml

from npdecode.cli import main
from npdecode.errors import NpdecodeError
from npdecode.merge.api import merge_models
from npdecode.merge.config import load_recipe


def _pair(checkpoints, family="llama"):
    return str(checkpoints(family, 0)), str(checkpoints(family, 1))


def _run_cli(tmp_path, recipe, capsys, *flags):
    path = tmp_path / "recipe.yml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "out"
    capsys.readouterr()  # drop the fixtures' output
    with pytest.raises(SystemExit) as exc:
        main(["merge", str(path), str(out), "--no-progress", *flags])
    return exc.value.code, capsys.readouterr().err, out


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda r: r.update(merge_method="tiess"), "unknown merge_method 'tiess'"),
        (lambda r: r.update(paramters={"weight": 1}), "paramters: unknown key"),
        (lambda r: r["models"][0].update(parameters={"wieght": 1}), "unknown parameter 'wieght'"),
        (lambda r: r["models"][0].update(layer_range=[0, 1]), "models.0.layer_range: unknown key"),
        (lambda r: r.update(merge_method="ties", parameters={"density": 0.5}), "requires a base_model"),
        (lambda r: r.update(dtype="float17"), "unknown dtype 'float17'"),
        (lambda r: r.update(slices=[]), "exactly one of 'models', 'slices' or 'modules'"),
        (lambda r: r["models"][1].update(parameters={"weight": "heavy"}), "must be a number"),
    ],
)
def test_bad_recipe_is_one_line_error_before_output(mutate, message, checkpoints, tmp_path, capsys):
    a, b = _pair(checkpoints)
    recipe = {"merge_method": "linear", "models": [{"model": a, "parameters": {"weight": 1}},
                                                   {"model": b, "parameters": {"weight": 1}}]}  # fmt: skip
    mutate(recipe)
    code, err, out = _run_cli(tmp_path, recipe, capsys)
    assert code == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_mismatched_shapes_rejected(checkpoints, tmp_path, capsys):
    from tests.tiny_models import save_checkpoint

    small = str(checkpoints("llama", 0))
    other = save_checkpoint("llama", tmp_path / "bigvocab", 1, vocab=[f"t{i}" for i in range(50)])
    recipe = {"merge_method": "linear", "models": [{"model": small, "parameters": {"weight": 1}},
                                                   {"model": str(other), "parameters": {"weight": 1}}]}  # fmt: skip
    code, err, out = _run_cli(tmp_path, recipe, capsys)
    assert code == 2 and "vocabulary sizes differ" in err and not out.exists()


def test_missing_tensor_is_an_error_unless_the_recipe_fills_it(checkpoints, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    a, b = _pair(checkpoints)
    holed = tmp_path / "holed"
    shutil.copytree(b, holed)
    state = load_file(holed / "model.safetensors")
    del state["model.layers.1.mlp.up_proj.weight"]
    save_file(state, holed / "model.safetensors", metadata={"format": "pt"})
    recipe = {
        "merge_method": "linear",
        "base_model": a,
        "models": [{"model": a, "parameters": {"weight": 1}}, {"model": str(holed), "parameters": {"weight": 1}}],
    }
    with pytest.raises(NpdecodeError, match="has no tensor 'model.layers.1.mlp.up_proj.weight'"):
        merge_models(recipe, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    # reversed roles: the extra tensor of the base-less side is never dropped silently either
    rev = {**recipe, "base_model": str(holed)}
    with pytest.raises(NpdecodeError, match="lacks"):
        merge_models(rev, tmp_path / "out")
    filled = merge_models({**recipe, "missing_tensors": "base"}, tmp_path / "filled", progress=False)
    assert filled.tensors == 21 and filled.warnings


def test_mixed_architectures_need_allow_crimes(checkpoints, tmp_path):
    recipe = {
        "merge_method": "linear",
        "models": [
            {"model": str(checkpoints("llama", 0)), "parameters": {"weight": 1}},
            {"model": str(checkpoints("gpt2", 0)), "parameters": {"weight": 1}},
        ],
    }
    with pytest.raises(NpdecodeError, match="--allow-crimes"):
        merge_models(recipe, tmp_path / "out")


def test_interrupted_merge_leaves_no_complete_looking_dir(checkpoints, tmp_path, monkeypatch):
    from npdecode.merge import executor

    a, b = _pair(checkpoints)
    calls = {"n": 0}
    real = executor.compute_task

    def flaky(plan, task, device):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(plan, task, device)

    monkeypatch.setattr(executor, "compute_task", flaky)
    recipe = {"merge_method": "linear", "models": [{"model": a, "parameters": {"weight": 1}},
                                                   {"model": b, "parameters": {"weight": 1}}]}  # fmt: skip
    with pytest.raises(KeyboardInterrupt):
        merge_models(recipe, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_dry_run_writes_nothing(checkpoints, tmp_path, capsys):
    a, b = _pair(checkpoints)
    recipe = {"merge_method": "linear", "models": [{"model": a, "parameters": {"weight": 1}},
                                                   {"model": b, "parameters": {"weight": 1}}]}  # fmt: skip
    for flag in ("--dry-run", "--check"):
        path = tmp_path / "recipe.yml"
        path.write_text(yaml.safe_dump(recipe))
        main(["merge", str(path), str(tmp_path / "out"), flag])
        assert "nothing written" in capsys.readouterr().out
        assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.yml"]


def test_recipe_schema_is_frozen_and_normalizes_parameters():
    recipe = load_recipe(
        {
            "merge_method": "slerp",
            "base_model": "x",
            "slices": [{"sources": [{"model": "x", "layer_range": [0, 4]}, {"model": "y", "layer_range": [0, 4]}]}],
            "parameters": {"t": [{"filter": "self_attn", "value": [0, 1]}, {"value": 0.5}]},
        }
    )
    setting = recipe.parameters["t"]
    assert setting[0].filter == "self_attn" and setting[0].value == (0.0, 1.0) and setting[1].value == 0.5
    with pytest.raises(pydantic.ValidationError):
        recipe.merge_method = "linear"  # frozen
    with pytest.raises(NpdecodeError, match="same number of layers"):
        load_recipe(
            {
                "merge_method": "passthrough",
                "slices": [{"sources": [{"model": "x", "layer_range": [0, 4]}, {"model": "y", "layer_range": [0, 3]}]}],
            }
        )


def test_shape_mismatch_names_the_tensor():
    import torch

    from npdecode.merge.api import merge_state_dicts

    sds = {"x": {"w": torch.zeros(3, 4)}, "y": {"w": torch.zeros(3, 5)}}
    recipe = {"merge_method": "linear", "models": [{"model": "x", "parameters": {"weight": 1}},
                                                   {"model": "y", "parameters": {"weight": 1}}]}  # fmt: skip
    with pytest.raises(
        NpdecodeError, match=r"tensor 'w' has different shapes across inputs \(x: \[3, 4\], y: \[3, 5\]\)"
    ):
        merge_state_dicts(recipe, sds)


def test_hub_id_offline_is_a_clear_error(monkeypatch, tmp_path):
    import huggingface_hub

    def offline(**kwargs):
        raise huggingface_hub.errors.LocalEntryNotFoundError("offline")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    recipe = {"merge_method": "passthrough", "models": [{"model": "someorg/not-cached-model"}]}
    with pytest.raises(NpdecodeError, match="not in the Hugging Face cache, and could not be downloaded"):
        merge_models(recipe, tmp_path / "out")
    with pytest.raises(NpdecodeError, match="no such directory"):
        merge_models({"merge_method": "passthrough", "models": [{"model": "./missing/dir"}]}, tmp_path / "out")
    assert not (tmp_path / "out").exists()
