"""``manifest.json`` of an index dir: what was built, from what, with what.

The manifest is the index's table of contents: config, model reference and digest, corpus
digests (one per build or append), counts, package versions, and the files that make up the
current index (segments of CE rows and documents; the current trie and store files). It is
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
from typing import Any

from npdecode.atomic import atomic_file
from npdecode.errors import NpdecodeError

MANIFEST = "manifest.json"
FORMAT = "npdecode-index/1"


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


def write_manifest(index_dir: str | Path, manifest: dict[str, Any]) -> None:
    """Write ``manifest.json`` atomically (temp file + rename)."""
    with atomic_file(Path(index_dir) / MANIFEST) as fh:
        json.dump(manifest, fh, indent=2, sort_keys=True)
        fh.write("\n")


def read_manifest(index_dir: str | Path) -> dict[str, Any]:
    """Read and check an index dir's manifest; NpdecodeError when it is not an index dir."""
    path = Path(index_dir) / MANIFEST
    if not path.is_file():
        raise NpdecodeError(f"{index_dir}: not an index dir (no {MANIFEST}); build one with `npdecode index`")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise NpdecodeError(f"{path}: malformed JSON ({err.msg}); rebuild the index") from None
    if manifest.get("format") != FORMAT:
        raise NpdecodeError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT!r}; rebuild the index")
    return manifest
