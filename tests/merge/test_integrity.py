"""A merge output records every file it wrote in checksums.json; a damaged one is named by
`npdecode verify` (exit 1) and by loading the merged model (one NpdecodeError line)."""

from __future__ import annotations

import json
import shutil

import pytest

from npdecode.backbone import load_backbone
from npdecode.errors import NpdecodeError
from npdecode.merge.api import merge_models
from tests.damage import HOW, damage, run_cli
from tests.merge.helpers import linear_recipe

MERGED_FILES = ["model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json", "mergekit_config.yml"]


@pytest.fixture(scope="module")
def merged(checkpoints, tmp_path_factory):
    out = tmp_path_factory.mktemp("merged") / "out"
    merge_models(linear_recipe([checkpoints("t5", 0), checkpoints("t5", 1)], [0.5, 0.5]), out, progress=False)
    return out


@pytest.fixture
def copy(merged, tmp_path):
    return shutil.copytree(merged, tmp_path / "out")


def test_checksums_cover_every_file_and_verify_clean(merged, capsys):
    record = json.loads((merged / "checksums.json").read_text())
    names = sorted(p.name for p in merged.iterdir() if p.name != "checksums.json")
    assert sorted(record["files"]) == names and set(MERGED_FILES) <= set(names)
    assert all(record["files"][n]["size"] == (merged / n).stat().st_size for n in names)
    code, out = run_cli(["verify", str(merged)], capsys)
    assert code == 0 and f"all {len(names)} recorded files intact" in out
    load_backbone(merged, verify=True)


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("name", MERGED_FILES)
def test_a_damaged_merge_output_file_is_named(copy, name, how, capsys):
    damage(copy / name, how)
    code, out = run_cli(["verify", str(copy)], capsys)
    assert code == 1 and f"{copy / name}: " in out and "Traceback" not in out, out
    with pytest.raises(NpdecodeError, match=rf"{name}: (truncated|missing|corrupted)") as err:
        load_backbone(copy, verify=True)
    assert "\n" not in str(err.value) and "npdecode verify" in str(err.value)


def test_loading_without_verify_checks_sizes(copy, tmp_path, capsys):
    damage(copy / "model.safetensors", "truncate")
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(json.dumps({"_id": "a", "title": "a b", "text": "c d"}) + "\n")
    code, out = run_cli(["index", str(corpus), "--model", str(copy), "--out", str(tmp_path / "idx")], capsys)
    assert code == 2 and "Traceback" not in out
    assert out.startswith(f"error: {copy / 'model.safetensors'}: truncated") and out.count("\n") == 1


def test_a_damaged_record_is_one_line(copy, capsys):
    damage(copy / "checksums.json", "truncate")
    code, out = run_cli(["verify", str(copy)], capsys)
    assert code == 1 and "checksums.json: unreadable" in out
    with pytest.raises(NpdecodeError, match=r"checksums.json: unreadable \(JSONDecodeError"):
        load_backbone(copy)
