"""Lazy tensor readers: safetensors (memory-mapped) and ``.bin`` checkpoints, sharded or not.

A reader knows every tensor's name, shape and dtype from the file headers alone; ``get(name)``
materialises one tensor. ``.bin`` files are opened with ``torch.load(mmap=True,
weights_only=True)``: storages stay on disk until touched, and a checkpoint can never run code.
Model references are local directories or hub ids (``owner/name[@revision]``), resolved
through the local Hugging Face cache first.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import warnings
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from npdecode.errors import NpdecodeError

SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}  # fmt: skip

_NOT_WEIGHTS = ("training_args", "adapter_model", "npdecode_", "optimizer", "scheduler")
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.bin", "*.model", "*.txt", "*.py", "*.tiktoken"]


class TensorReader:
    """Read-only, lazy view of a set of named tensors."""

    def keys(self) -> list[str]:
        raise NotImplementedError

    def shape(self, name: str) -> tuple[int, ...]:
        raise NotImplementedError

    def dtype(self, name: str) -> torch.dtype:
        raise NotImplementedError

    def get(self, name: str) -> torch.Tensor:
        raise NotImplementedError

    def shared_storage_groups(self) -> list[list[str]]:
        """Names that share one storage (tied weights saved once); empty when unknown."""
        return []


class SafetensorsReader(TensorReader):
    """Tensors of one or more ``.safetensors`` files, read through a memory map.

    The header (JSON) gives names, shapes, dtypes and byte ranges. ``get`` returns a tensor
    that *is* the mapped bytes (no copy: inputs live in the kernel's page cache, not in the
    process's anonymous memory). The map is private (copy-on-write), so a method that writes
    into an input never touches the file. When the tensor is freed its pages are dropped
    from this process (``MADV_DONTNEED``), so resident memory stays a few tensors no matter
    how large the inputs are; a later read simply faults them in again from the file.
    """

    def __init__(self, files: Iterable[Path]):
        self._maps: dict[Path, mmap.mmap] = {}
        self._where: dict[str, tuple[Path, int, int]] = {}  # name -> file, start, end (absolute)
        self._meta: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
        for path in files:
            header, data_start = _read_header(path)
            with open(path, "rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                self._maps[path] = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY) if size else None  # type: ignore[assignment]
            for name, info in header.items():
                if name == "__metadata__":
                    continue
                begin, end = info["data_offsets"]
                if info["dtype"] not in SAFETENSORS_DTYPES or data_start + end > size:
                    raise NpdecodeError(f"{path}: tensor {name!r} has an unsupported dtype or lies past the file end")
                self._where[name] = (path, data_start + begin, data_start + end)
                self._meta[name] = (tuple(info["shape"]), SAFETENSORS_DTYPES[info["dtype"]])

    def keys(self) -> list[str]:
        return list(self._where)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._meta[name][0]

    def dtype(self, name: str) -> torch.dtype:
        return self._meta[name][1]

    def get(self, name: str) -> torch.Tensor:
        path, begin, end = self._where[name]
        shape, dtype = self._meta[name]
        if end == begin:
            return torch.empty(shape, dtype=dtype)
        mapped = self._maps[path]
        with warnings.catch_warnings():  # the buffer is writable (copy-on-write); silence torch's check
            warnings.simplefilter("ignore", UserWarning)
            flat = torch.frombuffer(mapped, dtype=torch.uint8, count=end - begin, offset=begin)
        tensor = flat.view(dtype).reshape(shape)
        weakref.finalize(tensor, _drop_pages, mapped, begin, end)
        return tensor


def _drop_pages(mapped: mmap.mmap, begin: int, end: int) -> None:
    """Release the pages of ``[begin, end)`` from this process (the file keeps the data)."""
    page = begin - begin % mmap.PAGESIZE
    with contextlib.suppress(OSError, ValueError, AttributeError):  # non-Linux, closed map
        mapped.madvise(mmap.MADV_DONTNEED, page, end - page)


def _read_header(path: Path) -> tuple[dict[str, Any], int]:
    """The JSON header of a safetensors file and where its data section starts."""
    try:
        with open(path, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            if not 0 < n < 100 * 1024**2:
                raise ValueError(f"header length {n}")
            header = json.loads(fh.read(n))
    except (OSError, ValueError) as err:
        raise NpdecodeError(f"{path}: not a readable safetensors file ({err})") from None
    return header, 8 + n


class DictReader(TensorReader):
    """An in-memory state dict seen through the reader interface."""

    def __init__(self, state: Mapping[str, torch.Tensor]):
        self._tensors = dict(state)

    def keys(self) -> list[str]:
        return list(self._tensors)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._tensors[name].shape)

    def dtype(self, name: str) -> torch.dtype:
        return self._tensors[name].dtype

    def get(self, name: str) -> torch.Tensor:
        return self._tensors[name]

    def shared_storage_groups(self) -> list[list[str]]:
        groups: dict[tuple[int, int, tuple[int, ...]], list[str]] = {}
        for name, t in self._tensors.items():
            key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
            groups.setdefault(key, []).append(name)
        return [g for g in groups.values() if len(g) > 1]


class TorchBinReader(DictReader):
    """Tensors of ``pytorch_model*.bin`` files, loaded with ``mmap=True, weights_only=True``."""

    def __init__(self, files: Iterable[Path]):
        self._tensors: dict[str, torch.Tensor] = {}
        for path in files:
            try:
                state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
            except Exception as err:  # noqa: BLE001 - unpickling errors, old non-zip formats: one message
                raise NpdecodeError(
                    f"{path}: cannot be memory-mapped safely ({str(err).splitlines()[0]}); "
                    "convert it to safetensors or re-save it with torch>=1.6"
                ) from None
            if not isinstance(state, Mapping):
                raise NpdecodeError(f"{path}: expected a state dict, found {type(state).__name__}")
            self._tensors.update({k: v for k, v in state.items() if isinstance(v, torch.Tensor)})


@dataclass
class ModelSource:
    """One input model: its reference, directory (None in memory), config and tensors."""

    ref: str
    reader: TensorReader
    config: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


def _weight_files(directory: Path) -> tuple[str, list[Path]]:
    """(``safetensors`` | ``bin``, files) of a checkpoint directory; index files honoured."""
    for kind, index_name, single, pattern in (
        ("safetensors", "model.safetensors.index.json", "model.safetensors", "*.safetensors"),
        ("bin", "pytorch_model.bin.index.json", "pytorch_model.bin", "*.bin"),
    ):
        index = directory / index_name
        if index.is_file():
            weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
            return kind, [directory / f for f in dict.fromkeys(weight_map.values())]
        if (directory / single).is_file():
            return kind, [directory / single]
        # not model weights: training state, LoRA adapters, npdecode's CE table (never merged)
        found = sorted(p for p in directory.glob(pattern) if not p.name.startswith(_NOT_WEIGHTS))
        if found:
            return kind, found
    raise NpdecodeError(
        f"{directory}: no model weights found (expected model.safetensors, sharded safetensors "
        "with model.safetensors.index.json, or pytorch_model.bin)"
    )


def resolve_model_dir(ref: str) -> Path:
    """A local directory for ``ref``: a path, or a hub id from the cache or the network."""
    local = Path(ref).expanduser()
    if local.is_dir():
        return local
    if local.exists() or ref.startswith((".", "/", "~")) or ref.count("/") != 1:
        raise NpdecodeError(f"model {ref!r}: no such directory (and not a hub id of the form owner/name)")
    repo_id, _, revision = ref.partition("@")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - transformers always brings huggingface_hub
        raise NpdecodeError(f"model {ref!r} is not a local directory and huggingface_hub is missing") from None
    kwargs = {"repo_id": repo_id, "revision": revision or None, "allow_patterns": _HUB_PATTERNS}
    try:
        return Path(snapshot_download(local_files_only=True, **kwargs))
    except Exception:  # noqa: BLE001, S110 - not cached (whatever the hub's error type): try the network below
        pass
    try:
        return Path(snapshot_download(**kwargs))
    except Exception as err:  # noqa: BLE001 - offline, unknown repo, gated repo...: one message
        raise NpdecodeError(
            f"model {ref!r} is not a local directory, not in the Hugging Face cache, and could not be "
            f"downloaded ({type(err).__name__}); download it first or pass a local path"
        ) from None


def open_model_dir(ref: str, directory: Path) -> ModelSource:
    """Open the weights and config of a checkpoint directory (headers only)."""
    kind, files = _weight_files(directory)
    reader: TensorReader = SafetensorsReader(files) if kind == "safetensors" else TorchBinReader(files)
    config_path = directory / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    return ModelSource(ref=ref, reader=reader, config=config, path=directory)
