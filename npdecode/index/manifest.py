"""``manifest.json`` of an index dir: what was built, from what, with what.

The manifest is the index's table of contents: config, model reference and digest, corpus
digests (one per build or append), counts, package versions, the files that make up the
current index (segments of CE rows and documents; the current trie and store files) and the
size and xxh3_64 digest of each of them (``checksums``, :mod:`npdecode.integrity`). It is
written last and atomically, so the files it names are always complete: an index dir whose
manifest exists is usable, and an append interrupted before its manifest leaves the previous
index intact.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import platform
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from npdecode.atomic import atomic_file
from npdecode.errors import NpdecodeError
from npdecode.integrity import Checksums, record

MANIFEST = "manifest.json"
FORMAT = "npdecode-index/1"
MAX_LISTED = 1000  # doc ids a DocList names; its count is exact


def model_digest(model: str | Path) -> str | None:
    """sha256 over a local model dir's files (names and bytes); None for a hub id."""
    from npdecode.corpus import files_digest

    path = Path(model)
    if not path.is_dir():
        return None
    return files_digest([(str(f.relative_to(path)), f) for f in sorted(p for p in path.rglob("*") if p.is_file())])


def weights_digest(module: Any) -> str:
    """sha256 over a model in memory: its state dict's names, dtypes, shapes and bytes."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def config_digest(config: dict[str, Any]) -> str:
    """sha256 of the config's canonical JSON."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def package_versions() -> dict[str, str | None]:
    """Versions of the packages whose numbers an index depends on."""
    import importlib.metadata as md

    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("npdecode", "torch", "transformers", "pytorch-lightning", "faiss-cpu", "faiss-gpu"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = None
    return versions


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelRef(_Part):
    ref: str  # the model the CE was extracted with (path or hub id)
    digest: str | None = None  # sha256 of its files; None for a hub id
    family: str
    checkpoint: str | None = None  # a trained checkpoint to decode with, relative to the index dir


class CorpusEntry(_Part):
    path: str
    digest: str
    segment: str


class DocList(_Part):
    """A number of documents and (the first ``MAX_LISTED`` of) their ids, sorted."""

    count: int
    doc_ids: list[str]

    @classmethod
    def of(cls, doc_ids: list[str]) -> DocList:
        ids = sorted(doc_ids)
        return cls(count=len(ids), doc_ids=ids[:MAX_LISTED])  # a manifest stays readable


class Skipped(_Part):
    empty: DocList | None = None  # documents with neither title nor text: no identifier


class SegmentEntry(_Part):
    name: str
    rows: int
    groups: int
    precision: str | None = None  # "32-true" / "bf16-mixed": what its CE was computed in
    removed: list[str] = []  # doc ids this append retired (--replace)
    joins: dict[str, list[str]] = {}  # group index -> documents identical to it
    skipped: Skipped | None = None  # documents of this build/append left out of the index
    cut_identifiers: DocList | None = None  # identifiers cut to the token budget (first doc id of each)


class GenerationFiles(_Part):
    trie_ce: str
    trie_token: str
    store: str
    raw_store: str | None = None


class Counts(_Part):
    documents: int
    identifiers: int
    occurrences: int
    ce_rows: int
    trie_ce_nodes: int
    trie_token_nodes: int


class IndexManifest(_Part):
    """``manifest.json`` of an index dir, typed and validated (docs/index-format.md)."""

    format: Literal["npdecode-index/1"] = FORMAT
    created: str
    updated: str
    config: dict[str, Any]
    config_digest: str
    model: ModelRef
    corpus: list[CorpusEntry]
    segments: list[SegmentEntry]
    generation: int
    files: GenerationFiles
    counts: Counts
    versions: dict[str, str | None] = {}
    # size + xxh3_64 of every file above (npdecode/integrity.py); None: built before they were recorded
    checksums: Checksums | None = None


def index_files(index_dir: str | Path, manifest: IndexManifest) -> list[str]:
    """The files (relative to the index dir) the manifest makes up the index of: every file of
    its segments and the current generation's tries and stores (``.faiss`` or ``.pt``)."""
    index_dir = Path(index_dir)
    names = []
    for seg in manifest.segments:
        seg_dir = index_dir / "segments" / seg.name
        if seg_dir.is_dir():
            names += [f"segments/{seg.name}/{p.name}" for p in seg_dir.iterdir() if p.is_file() and p.name[0] != "."]
    files = manifest.files
    names += [files.trie_ce, files.trie_token]
    for store in (files.store, files.raw_store):
        if store is not None and (index_dir / store).is_dir():  # a raw store in parts
            names += [f"{store}/{p.name}" for p in sorted((index_dir / store).iterdir()) if p.name[0] != "."]
        elif store is not None:
            names.append(f"{store}.faiss" if (index_dir / f"{store}.faiss").is_file() else f"{store}.pt")
    return names


def write_manifest(index_dir: str | Path, manifest: IndexManifest | dict[str, Any]) -> None:
    """Write ``manifest.json`` atomically (temp file + rename), validated first, with the
    checksums of :func:`index_files` (files the manifest recorded before are not read again:
    segments and generations are never rewritten under the same name)."""
    if not isinstance(manifest, IndexManifest):
        manifest = IndexManifest(**manifest)
    before = manifest.checksums.files if manifest.checksums is not None else {}
    checksums = record(index_dir, index_files(index_dir, manifest), reuse=before)
    manifest = manifest.model_copy(update={"checksums": checksums})
    with atomic_file(Path(index_dir) / MANIFEST) as fh:
        json.dump(manifest.model_dump(mode="json", exclude_none=True), fh, indent=2, sort_keys=True)
        fh.write("\n")


def read_manifest(index_dir: str | Path) -> IndexManifest:
    """Read and validate an index dir's manifest; NpdecodeError when it is not an index dir."""
    from pydantic import ValidationError

    path = Path(index_dir) / MANIFEST
    if not path.is_file():
        raise NpdecodeError(f"{index_dir}: not an index dir (no {MANIFEST}); build one with `npdecode index`")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise NpdecodeError(f"{path}: malformed JSON ({err.msg}); rebuild the index") from None
    except (UnicodeDecodeError, OSError) as err:
        raise NpdecodeError(f"{path}: unreadable ({type(err).__name__}); rebuild the index") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else None
        raise NpdecodeError(f"{path}: format {found!r}, expected {FORMAT!r}; rebuild the index")
    try:
        return IndexManifest(**data)
    except ValidationError as err:
        problem = err.errors()[0]
        where = ".".join(str(p) for p in problem["loc"])
        raise NpdecodeError(f"{path}: invalid manifest ({where}: {problem['msg']}); rebuild the index") from None
