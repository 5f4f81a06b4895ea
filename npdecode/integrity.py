"""Checksums of the files an artifact dir is made of: each file's size and xxh3_64 digest.

Every artifact npdecode writes (an index dir, a checkpoint dir of ``save_model``, a merge output)
records, for each file it is made of, ``{"size": bytes, "digest": xxh3_64 hex}`` under paths
relative to the dir, in one record::

    {"algorithm": "xxh3_64", "files": {"segments/00000/ce.safetensors": {"size": 123, "digest": "..."}}}

An index dir keeps it as the ``checksums`` of its ``manifest.json`` (written last, atomically, so
the record and the files it names switch together); a checkpoint dir and a merge output keep it in
their own ``checksums.json``, written atomically after the files it covers. The record cannot
cover the file it lives in: ``manifest.json`` and ``checksums.json`` prove themselves by parsing
(JSON and the schema).

Loading compares sizes (a ``stat`` per file: a truncated file is found before a decoder trips
over it) and, when asked, digests (a read of every byte: bytes overwritten in place, size
unchanged). ``npdecode verify DIR`` checks both and lists every bad file.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from npdecode.atomic import atomic_file
from npdecode.errors import NpdecodeError

ALGORITHM = "xxh3_64"  # ~10+ GB/s on one core: reading the file costs more than hashing it
CHECKSUMS = "checksums.json"  # the record of a checkpoint dir or a merge output
_CHUNK = 8 << 20  # bytes read per call: large enough that the per-call overhead vanishes


class FileSum(BaseModel):
    """A file's size in bytes and the hex xxh3_64 digest of its bytes."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    size: int
    digest: str


class Checksums(BaseModel):
    """The record: relative path (``/``-separated) -> :class:`FileSum`."""

    model_config = ConfigDict(extra="forbid")
    algorithm: Literal["xxh3_64"] = ALGORITHM
    files: dict[str, FileSum] = {}


@dataclass(frozen=True)
class Problem:
    """A recorded file that is not as recorded: ``missing``, ``truncated`` or ``grown`` (size)
    or ``corrupted`` (same size, other digest)."""

    path: Path
    kind: Literal["missing", "truncated", "grown", "corrupted"]
    detail: str

    def __str__(self) -> str:
        return f"{self.path}: {self.kind} ({self.detail})"


def digest_file(path: str | Path) -> str:
    """Hex xxh3_64 digest of the file's bytes, read in chunks (constant memory)."""
    import xxhash

    digest = xxhash.xxh3_64()
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buffer):
            digest.update(view[:n])
    return digest.hexdigest()


def file_sum(path: str | Path) -> FileSum:
    """Size and digest of one file."""
    return FileSum(size=os.path.getsize(path), digest=digest_file(path))


def record(root: str | Path, names: Iterable[str], *, reuse: Mapping[str, FileSum] | None = None) -> Checksums:
    """The record of the files ``names`` (relative to ``root``).

    ``reuse``: entries of an earlier record kept as they are for files that never change once
    written (an index's old segments when an append records the new ones): they are not read
    again, and damage done to them since stays visible to :func:`check`.
    """
    root, reuse = Path(root), reuse or {}
    files = {}
    for name in sorted(set(names)):
        files[name] = reuse[name] if name in reuse else file_sum(root / name)
    return Checksums(files=files)


def dir_files(root: str | Path) -> list[str]:
    """Every file under ``root`` (relative, ``/``-separated, sorted) but ``checksums.json`` and
    hidden files (the temp files of :mod:`npdecode.atomic`)."""
    root = Path(root)
    names = []
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if path.is_file() and rel.as_posix() != CHECKSUMS and not any(p.startswith(".") for p in rel.parts):
            names.append(rel.as_posix())
    return sorted(names)


def write_checksums(root: str | Path, names: Iterable[str] | None = None) -> Checksums:
    """Record ``names`` (default: every file of :func:`dir_files`) in ``root/checksums.json``,
    atomically; call it after the files it covers are complete."""
    root = Path(root)
    checksums = record(root, dir_files(root) if names is None else names)
    with atomic_file(root / CHECKSUMS) as fh:
        json.dump(checksums.model_dump(mode="json"), fh, indent=2, sort_keys=True)
        fh.write("\n")
    return checksums


def read_checksums(root: str | Path) -> Checksums | None:
    """``root/checksums.json`` read and validated; None when the dir has none (an artifact
    written before npdecode recorded checksums). A damaged one is a one-line NpdecodeError."""
    path = Path(root) / CHECKSUMS
    if not path.is_file():
        return None
    with reading(path, f"run `npdecode verify {root}`; write {root} again to record its checksums anew"):
        data = json.loads(path.read_text(encoding="utf-8"))
    return parse_checksums(data, path)


def parse_checksums(data: object, where: Path) -> Checksums:
    """A record from its JSON data; ``where`` (the file it came from) names it in errors."""
    try:
        return Checksums.model_validate(data)
    except ValidationError as err:
        problem = err.errors()[0]
        loc = ".".join(str(p) for p in problem["loc"])
        raise NpdecodeError(f"{where}: invalid checksum record ({loc}: {problem['msg']})") from None


def check(root: str | Path, checksums: Checksums, *, digests: bool) -> list[Problem]:
    """Every recorded file that is missing or of another size, and with ``digests`` also every
    one whose bytes changed; ``[]`` when all are as recorded. Files not in the record are not
    looked at (caches, work dirs)."""
    root = Path(root)
    problems = []
    for name, want in checksums.files.items():
        path = root / name
        try:
            size = os.path.getsize(path)
        except FileNotFoundError:
            problems.append(Problem(path, "missing", f"recorded {want.size} bytes"))
            continue
        if size != want.size:
            kind = "truncated" if size < want.size else "grown"
            problems.append(Problem(path, kind, f"{size} bytes, recorded {want.size}"))
        elif digests and (got := digest_file(path)) != want.digest:
            problems.append(Problem(path, "corrupted", f"{ALGORITHM} {got}, recorded {want.digest}"))
    return problems


def ensure_intact(root: str | Path, checksums: Checksums | None, *, digests: bool, remedy: str) -> None:
    """Raise one NpdecodeError line naming the first bad file (and how many more there are)
    and the ``remedy``; nothing when all are as recorded or there is no record."""
    if checksums is None:
        return
    problems = check(root, checksums, digests=digests)
    if problems:
        more = f" and {len(problems) - 1} more bad file(s)" if len(problems) > 1 else ""
        raise NpdecodeError(f"{problems[0]}{more}; {remedy}")


def checkpoint_remedy(path: str | Path) -> str:
    """What to do about a damaged checkpoint dir or merge output (the tail of its errors)."""
    return f"write it again (`npdecode train`, `npdecode merge`); `npdecode verify {path}` lists every bad file"


@contextlib.contextmanager
def reading(path: str | Path, remedy: str) -> Iterator[None]:
    """Turn whatever a decoder raises while reading ``path`` (a missing file, a truncated zip,
    a broken safetensors header, bad JSON) into one NpdecodeError line naming the file and the
    ``remedy``. Wrap only the decoding call: any failure inside it is about the file's bytes."""
    try:
        yield
    except NpdecodeError:
        raise
    except FileNotFoundError:
        raise NpdecodeError(f"{path}: missing; {remedy}") from None
    except Exception as err:  # noqa: BLE001 - decoders raise anything (BadZipFile, SafetensorError, ...)
        message = str(err).strip().splitlines()[0][:160] if str(err).strip() else ""
        detail = f"{type(err).__name__}: {message}" if message else type(err).__name__
        raise NpdecodeError(f"{path}: unreadable ({detail}); {remedy}") from None
