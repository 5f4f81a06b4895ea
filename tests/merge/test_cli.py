"""The ``npdecode merge`` command: options, outputs, reproducible random methods."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from click.testing import CliRunner

from npdecode.errors import NpdecodeError
from npdecode.merge.cli import merge_command, parse_size
from tests.merge.helpers import read_tensors


def test_parse_size():
    assert parse_size("1000") == 1000
    assert parse_size("2K") == 2048 and parse_size("1.5M") == int(1.5 * 1024**2) and parse_size("5G") == 5 * 1024**3
    assert parse_size("500MB") == 500 * 1024**2
    with pytest.raises(NpdecodeError, match="out-shard-size"):
        parse_size("lots")


def _recipe(tmp_path, recipe):
    path = tmp_path / "recipe.yml"
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


def test_cli_writes_a_complete_checkpoint(checkpoints, tmp_path):
    a, b = str(checkpoints("t5", 0)), str(checkpoints("t5", 1))
    recipe = _recipe(tmp_path, {"merge_method": "task_arithmetic", "base_model": a,
                                "models": [{"model": b, "parameters": {"weight": 0.5}}]})  # fmt: skip
    out = tmp_path / "out"
    result = CliRunner().invoke(
        merge_command, [recipe, str(out), "--out-shard-size", "8K", "--dtype", "float64", "-j", "2", "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors.index.json", "mergekit_config.yml", "README.md",
            "tokenizer.json", "generation_config.json"} <= names  # fmt: skip
    assert sum(n.endswith(".safetensors") for n in names) > 1
    assert yaml.safe_load((out / "mergekit_config.yml").read_text())["merge_method"] == "task_arithmetic"
    assert json.loads((out / "config.json").read_text())["dtype"] == "float64"
    merged, ta, tb = read_tensors(out), read_tensors(a), read_tensors(b)
    torch.testing.assert_close(
        merged["shared.weight"], (ta["shared.weight"] + 0.5 * (tb["shared.weight"] - ta["shared.weight"])).double()
    )


def test_no_copy_tokenizer(checkpoints, tmp_path):
    a = str(checkpoints("gpt2", 0))
    recipe = _recipe(tmp_path, {"merge_method": "passthrough", "models": [{"model": a}]})
    out = tmp_path / "out"
    result = CliRunner().invoke(merge_command, [recipe, str(out), "--no-copy-tokenizer", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert not (out / "tokenizer.json").exists() and (out / "config.json").exists()


def test_random_seed_makes_dare_reproducible(checkpoints, tmp_path):
    a, b, c = (str(checkpoints("llama", s)) for s in (0, 1, 2))
    recipe = _recipe(
        tmp_path,
        {
            "merge_method": "dare_ties",
            "base_model": a,
            "models": [{"model": m, "parameters": {"weight": 0.5, "density": 0.5}} for m in (b, c)],
        },
    )
    outs = {}
    for name, seed in (("x", "1"), ("y", "1"), ("z", "2")):
        result = CliRunner().invoke(
            merge_command, [recipe, str(tmp_path / name), "--random-seed", seed, "--no-progress"]
        )
        assert result.exit_code == 0, result.output
        outs[name] = read_tensors(tmp_path / name)
    q = "model.layers.0.self_attn.q_proj.weight"
    assert all(torch.equal(outs["x"][k], outs["y"][k]) for k in outs["x"])
    assert not torch.equal(outs["x"][q], outs["z"][q])


def test_cli_is_registered():
    from npdecode.cli import cli

    result = CliRunner().invoke(cli, ["merge", "--help"])
    assert result.exit_code == 0 and "--out-shard-size" in result.output and "--allow-crimes" in result.output


def test_a_merge_without_seed_records_the_seed_it_drew_and_reproduces_from_it(checkpoints, tmp_path):
    import re

    a, b, c = (str(checkpoints("llama", s)) for s in (0, 1, 2))
    recipe = _recipe(
        tmp_path,
        {
            "merge_method": "dare_ties",
            "base_model": a,
            "models": [{"model": m, "parameters": {"weight": 0.5, "density": 0.5}} for m in (b, c)],
        },
    )
    result = CliRunner().invoke(merge_command, [recipe, str(tmp_path / "drawn"), "--no-progress"])
    assert result.exit_code == 0, result.output
    copy = (tmp_path / "drawn" / "mergekit_config.yml").read_text()
    seed = re.match(r"# npdecode merge --random-seed (\d+)\n", copy).group(1)
    assert yaml.safe_load(copy)["merge_method"] == "dare_ties"  # still a plain MergeKit recipe
    again = CliRunner().invoke(merge_command, [recipe, str(tmp_path / "again"), "--random-seed", seed, "--no-progress"])
    assert again.exit_code == 0, again.output
    first, second = read_tensors(tmp_path / "drawn"), read_tensors(tmp_path / "again")
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_leftovers_of_a_killed_merge_are_removed_by_the_next_run(checkpoints, tmp_path):
    """SIGKILL in the middle of writing: the hidden temp dir stays; the next merge into the same
    output removes it and says so."""
    import os
    import subprocess
    import sys
    import textwrap

    a, b = str(checkpoints("t5", 0)), str(checkpoints("t5", 1))
    recipe = _recipe(tmp_path, {"merge_method": "linear", "models": [{"model": m, "parameters": {"weight": 0.5}}
                                                                      for m in (a, b)]})  # fmt: skip
    out = tmp_path / "out"
    script = textwrap.dedent(f"""
        import os, signal
        import npdecode.merge.writer as writer
        real = writer.SafetensorsSink.write
        def write(self, *args, **kwargs):
            real(self, *args, **kwargs)
            os.kill(os.getpid(), signal.SIGKILL)
        writer.SafetensorsSink.write = write
        import npdecode.merge.api as api
        api.SafetensorsSink = writer.SafetensorsSink
        api.merge_models({recipe!r}, {str(out)!r})
    """)
    killed = subprocess.run(
        [sys.executable, "-c", script], check=False, cwd=os.getcwd(), capture_output=True, timeout=300
    )
    assert killed.returncode == -9
    left = list(tmp_path.glob(".out.tmp-*"))
    assert len(left) == 1 and not out.exists()
    result = CliRunner().invoke(merge_command, [recipe, str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert not left[0].exists() and (out / "config.json").is_file()
    assert f"removed {left[0]}" in result.output
