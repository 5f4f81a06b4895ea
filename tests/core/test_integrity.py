"""npdecode.integrity: streamed digests, records, checks, and decoder errors as one line."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import xxhash

from npdecode import integrity
from npdecode.errors import NpdecodeError
from npdecode.integrity import (
    CHECKSUMS,
    check,
    digest_file,
    ensure_intact,
    read_checksums,
    reading,
    record,
    write_checksums,
)
from tests.damage import damage


def _files(root):
    (root / "sub").mkdir(parents=True)
    (root / "a.bin").write_bytes(np.random.default_rng(0).bytes(10_000))
    (root / "sub" / "b.txt").write_text("hello\n")
    (root / ".a.bin.123.tmp").write_text("an atomic write's leftover")
    return root


def test_the_streamed_digest_is_xxh3_64_of_the_bytes_across_chunks(tmp_path, monkeypatch):
    data = np.random.default_rng(1).bytes(10_001)
    (tmp_path / "f").write_bytes(data)
    monkeypatch.setattr(integrity, "_CHUNK", 4096)  # three reads, the last one short
    assert digest_file(tmp_path / "f") == xxhash.xxh3_64(data).hexdigest()
    (tmp_path / "empty").write_bytes(b"")
    assert digest_file(tmp_path / "empty") == xxhash.xxh3_64(b"").hexdigest()


def test_write_checksums_covers_every_file_but_itself_and_hidden_ones(tmp_path):
    root = _files(tmp_path / "art")
    written = write_checksums(root)
    assert sorted(written.files) == ["a.bin", "sub/b.txt"]
    assert written.files["sub/b.txt"].size == 6
    assert read_checksums(root) == written
    assert json.loads((root / CHECKSUMS).read_text())["algorithm"] == "xxh3_64"
    assert check(root, written, digests=True) == []
    assert read_checksums(tmp_path) is None  # an artifact from before checksums: no record


@pytest.mark.parametrize(
    "how, kind, sizes_see_it",
    [("truncate", "truncated", True), ("flip", "corrupted", False), ("delete", "missing", True)],
)
def test_check_names_each_kind_of_damage(tmp_path, how, kind, sizes_see_it):
    root = _files(tmp_path / "art")
    checksums = write_checksums(root)
    damage(root / "a.bin", how)
    problems = check(root, checksums, digests=True)
    assert [(p.path.name, p.kind) for p in problems] == [("a.bin", kind)]
    assert bool(check(root, checksums, digests=False)) == sizes_see_it
    with pytest.raises(NpdecodeError, match=rf"a.bin: {kind} \(.*\); do this$"):
        ensure_intact(root, checksums, digests=True, remedy="do this")
    ensure_intact(root, None, digests=True, remedy="no record: nothing to check")


def test_a_grown_file_and_several_bad_files(tmp_path):
    root = _files(tmp_path / "art")
    checksums = write_checksums(root)
    with open(root / "sub" / "b.txt", "a") as fh:
        fh.write("more")
    damage(root / "a.bin", "delete")
    assert sorted(p.kind for p in check(root, checksums, digests=False)) == ["grown", "missing"]
    with pytest.raises(NpdecodeError, match=r"and 1 more bad file\(s\); fix it"):
        ensure_intact(root, checksums, digests=False, remedy="fix it")


def test_record_reuses_entries_without_reading_the_files(tmp_path):
    root = _files(tmp_path / "art")
    first = record(root, ["a.bin"])
    damage(root / "a.bin", "flip")  # damage done after recording stays visible
    again = record(root, ["a.bin", "sub/b.txt"], reuse=first.files)
    assert again.files["a.bin"] == first.files["a.bin"]
    assert [p.kind for p in check(root, again, digests=True)] == ["corrupted"]


def test_a_damaged_record_is_one_line(tmp_path):
    root = _files(tmp_path / "art")
    write_checksums(root)
    damage(root / CHECKSUMS, "truncate")
    with pytest.raises(NpdecodeError, match=r"checksums.json: unreadable \(JSONDecodeError"):
        read_checksums(root)
    (root / CHECKSUMS).write_text(json.dumps({"algorithm": "md5", "files": {}}))
    with pytest.raises(NpdecodeError, match=r"checksums.json: invalid checksum record \(algorithm"):
        read_checksums(root)


@pytest.mark.parametrize(
    "raised, shown",
    [
        (FileNotFoundError(2, "No such file"), "f.npz: missing; rebuild"),
        (
            zipfile.BadZipFile("File is not a zip file"),
            "f.npz: unreadable (BadZipFile: File is not a zip file); rebuild",
        ),
        (ValueError(), "f.npz: unreadable (ValueError); rebuild"),
    ],
)
def test_reading_turns_decoder_errors_into_one_line(tmp_path, raised, shown):
    with pytest.raises(NpdecodeError) as err, reading(tmp_path / "f.npz", "rebuild"):
        raise raised
    assert str(err.value) == f"{tmp_path}/{shown}"
    with pytest.raises(KeyboardInterrupt), reading(tmp_path / "f.npz", "rebuild"):
        raise KeyboardInterrupt


def test_a_truncated_trie_and_a_truncated_resume_checkpoint_are_one_line(tmp_path):
    from npdecode.train.run import _check_resumable
    from npdecode.trie import Trie, build_trie

    build_trie([[1, 2], [1, 3]]).save(tmp_path / "t.npz")
    damage(tmp_path / "t.npz", "truncate")
    with pytest.raises(NpdecodeError, match=r"t.npz: unreadable \(BadZipFile"):
        Trie.load(tmp_path / "t.npz")
    (tmp_path / "last.ckpt").write_bytes(b"PK\x03\x04 not a whole checkpoint")
    with pytest.raises(NpdecodeError, match=r"last.ckpt: unreadable \(.*\); delete it"):
        _check_resumable(tmp_path / "last.ckpt", module=None)


def test_a_damaged_ivf_normalizer_cache_is_rebuilt(tmp_path):
    import torch

    pytest.importorskip("faiss")
    from npdecode.normalizer import IvfNormalizer

    ce = torch.from_numpy(np.random.default_rng(0).standard_normal((64, 8)).astype(np.float32))
    assert not IvfNormalizer(ce, nlist=4, cache_dir=tmp_path).loaded
    (saved,) = tmp_path.glob("ivf-*.faiss")
    damage(saved, "truncate")
    assert not IvfNormalizer(ce, nlist=4, cache_dir=tmp_path).loaded  # rebuilt, saved again
    assert IvfNormalizer(ce, nlist=4, cache_dir=tmp_path).loaded
