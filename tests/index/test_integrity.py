"""Index dirs and checkpoints prove their files: every damaged file is named by `npdecode verify`
(exit 1) and by loading (one error line, exit 2, no traceback); appends and resumed builds keep
the record right; an index built before checksums were recorded still loads."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from npdecode.errors import NpdecodeError
from npdecode.index import extraction
from npdecode.index.builder import build_index
from npdecode.index.layout import load_index
from npdecode.index.manifest import read_manifest, write_manifest
from tests.damage import HOW, damage, run_cli
from tests.index.helpers import fast_config, toy_corpus_file, write_jsonl
from tests.tiny_models import toy_corpus

INDEX_FILES = [
    "manifest.json",
    "segments/00000/ce.safetensors",
    "segments/00000/documents.jsonl",
    "segments/00000/raw.safetensors",
    "trie-ce-00000.npz",
    "trie-token-00000.npz",
    "store-00000.faiss",
    "raw-store-00000/part-00000.faiss",
]
CHECKPOINT_FILES = [
    "model.safetensors",
    "config.json",
    "generation_config.json",
    "npdecode.json",
    "npdecode_ce.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
]


@pytest.fixture(scope="module")
def pristine(t5_dir, tmp_path_factory):
    """A run-shaped dir: ``index/`` (raw CE kept: every kind of index file) whose manifest points
    at ``checkpoint/``, an Np checkpoint over its CE table written by ``save_model``."""
    import torch

    from npdecode.backbone import load_backbone
    from npdecode.model import NpModel, save_model

    run = tmp_path_factory.mktemp("integrity") / "run"
    corpus = toy_corpus_file(run.parent)
    build_index(corpus, t5_dir, run / "index", fast_config(raw_ce=True))
    index = load_index(run / "index")
    ce, tokens = torch.from_numpy(index.vectors), torch.from_numpy(index.token_ids)
    save_model(NpModel(load_backbone(t5_dir), ce, tokens, start_ce_id=0, eos_ce_id=1), run / "checkpoint")
    manifest = read_manifest(run / "index")
    manifest.model.checkpoint = "../checkpoint"
    write_manifest(run / "index", manifest)
    return run


@pytest.fixture
def run_dir(pristine, tmp_path):
    return shutil.copytree(pristine, tmp_path / "run")


def _search(index_dir, capsys, *flags):
    return run_cli(["search", str(index_dir), "alpha river", "-k", "2", "--device", "cpu", *flags], capsys)


def _one_error_line(output: str, name: str) -> None:
    lines = [line for line in output.splitlines() if line.strip() and "Loading weights" not in line]
    assert "Traceback" not in output
    assert len(lines) == 1 and lines[0].startswith("error: ") and name in lines[0], output


def test_a_fresh_index_and_checkpoint_record_every_file_and_verify_clean(pristine, capsys):
    recorded = json.loads((pristine / "index" / "manifest.json").read_text())["checksums"]
    assert recorded["algorithm"] == "xxh3_64"
    assert sorted(recorded["files"]) == sorted(INDEX_FILES[1:])
    for entry, name in ((recorded["files"][n], n) for n in recorded["files"]):
        assert entry["size"] == (pristine / "index" / name).stat().st_size and len(entry["digest"]) == 16
    checkpoint = json.loads((pristine / "checkpoint" / "checksums.json").read_text())
    assert set(CHECKPOINT_FILES) <= set(checkpoint["files"])
    code, out = run_cli(["verify", str(pristine)], capsys)  # a run dir: both artifacts
    assert code == 0 and "index (index): all 7 recorded files intact" in out and "checkpoint (checkpoint)" in out
    code, out = _search(pristine / "index", capsys, "--verify")
    assert code == 0 and out.startswith("1\t")


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("name", INDEX_FILES)
def test_a_damaged_index_file_is_named_by_verify_and_by_search(run_dir, name, how, capsys):
    damage(run_dir / "index" / name, how)
    code, out = run_cli(["verify", str(run_dir / "index")], capsys)
    assert code == 1 and name in out and "Traceback" not in out, out
    # sizes are always checked; bytes overwritten in place need the digests (--verify)
    code, out = _search(run_dir / "index", capsys, *(["--verify"] if how == "flip" else []))
    assert code == 2
    _one_error_line(out, name)


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("name", CHECKPOINT_FILES)
def test_a_damaged_checkpoint_file_is_named_by_verify_and_by_search(run_dir, name, how, capsys):
    damage(run_dir / "checkpoint" / name, how)
    code, out = run_cli(["verify", str(run_dir / "checkpoint")], capsys)
    assert code == 1 and f"checkpoint/{name}" in out and "Traceback" not in out, out
    code, out = run_cli(["verify", str(run_dir)], capsys)  # the run dir names it too
    assert code == 1 and f"checkpoint/{name}" in out
    code, out = _search(run_dir / "index", capsys, *(["--verify"] if how == "flip" else []))
    assert code == 2
    _one_error_line(out, name)


def test_without_verify_search_checks_sizes_only(run_dir, capsys):
    damage(run_dir / "index" / "trie-token-00000.npz", "flip")  # not read by a ce-mode search
    code, _ = _search(run_dir / "index", capsys)
    assert code == 0
    with pytest.raises(NpdecodeError, match=r"trie-token-00000.npz: corrupted \(xxh3_64 "):
        load_index(run_dir / "index", verify=True)


def test_an_unrecorded_damaged_file_is_still_one_line(run_dir, capsys):
    """An index written before checksums were recorded: the decoders' own errors become one line."""
    path = run_dir / "index" / "manifest.json"
    data = json.loads(path.read_text())
    del data["checksums"]
    path.write_text(json.dumps(data))
    code, out = run_cli(["verify", str(run_dir / "index")], capsys)
    assert code == 1 and out.count("\n") == 1 and "no recorded checksums" in out
    assert _search(run_dir / "index", capsys)[0] == 0  # still loads
    damage(run_dir / "index" / "trie-ce-00000.npz", "truncate")
    code, out = _search(run_dir / "index", capsys)
    assert code == 2
    _one_error_line(out, "trie-ce-00000.npz: unreadable")
    damage(run_dir / "index" / "segments" / "00000" / "ce.safetensors", "truncate")
    with pytest.raises(NpdecodeError, match=r"ce.safetensors: unreadable \(SafetensorError"):
        load_index(run_dir / "index")


def test_append_records_the_new_files_and_drops_the_old_generation(t5_dir, tmp_path, capsys):
    docs = toy_corpus(16, seed=5)
    first = write_jsonl({k: v for k, v in docs.items() if int(k[1:]) < 10}, tmp_path / "a.jsonl")
    second = write_jsonl({f"n{k}": v for k, v in docs.items() if int(k[1:]) >= 10}, tmp_path / "b.jsonl")
    build_index(first, t5_dir, tmp_path / "idx", fast_config(raw_ce=True))
    before = read_manifest(tmp_path / "idx").checksums.files
    assert run_cli(["index", str(second), "--append", str(tmp_path / "idx")], capsys)[0] == 0
    after = read_manifest(tmp_path / "idx").checksums.files
    assert {n for n in after if "00001" in n} == {
        "segments/00001/ce.safetensors",
        "segments/00001/documents.jsonl",
        "segments/00001/raw.safetensors",
        "trie-ce-00001.npz",
        "trie-token-00001.npz",
        "store-00001.faiss",
        "raw-store-00001/part-00000.faiss",
        "raw-store-00001/part-00001.faiss",
    }
    assert not {n for n in after if n.split("/")[0].endswith(("-00000.npz", "-00000.faiss", "raw-store-00000"))}
    assert not (tmp_path / "idx" / "raw-store-00000").exists()
    assert all(after[n] == before[n] for n in before if n.startswith("segments/00000/"))
    code, out = run_cli(["verify", str(tmp_path / "idx")], capsys)
    assert code == 0 and "all 11 recorded files intact" in out  # the raw store in two parts
    damage(tmp_path / "idx" / "segments" / "00000" / "ce.safetensors", "truncate")  # an append reads it
    code, out = run_cli(["index", str(first), "--append", str(tmp_path / "idx"), "--replace"], capsys)
    assert code == 2
    _one_error_line(out, "segments/00000/ce.safetensors: truncated")


def test_a_resumed_build_records_the_files_it_finished_with(t5_dir, tmp_path, monkeypatch, capsys):
    corpus = toy_corpus_file(tmp_path)
    real, written = extraction.write_shard, []

    def crash_after_one(path, parts):
        if written:
            raise RuntimeError("simulated crash")
        written.append(path.name)
        real(path, parts)

    monkeypatch.setattr(extraction, "write_shard", crash_after_one)
    with pytest.raises(RuntimeError, match="simulated crash"):
        build_index(corpus, t5_dir, tmp_path / "idx", fast_config())
    monkeypatch.setattr(extraction, "write_shard", real)
    build_index(corpus, t5_dir, tmp_path / "idx", fast_config())
    code, out = run_cli(["verify", str(tmp_path / "idx")], capsys)
    assert code == 0 and "all 5 recorded files intact" in out


def test_verify_refuses_a_dir_that_is_no_artifact(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, out = run_cli(["verify", str(tmp_path / "empty")], capsys)
    assert code == 2 and "not an npdecode artifact dir" in out and out.count("\n") == 1
    code, out = run_cli(["verify", str(tmp_path / "nowhere")], capsys)
    assert code == 2 and "no such directory" in out


def test_an_index_without_its_manifest_is_reported_as_such(run_dir, capsys):
    os.unlink(run_dir / "index" / "manifest.json")
    code, out = run_cli(["verify", str(run_dir)], capsys)
    assert code == 1 and "index/manifest.json: missing" in out
