"""Writing the merged checkpoint: HF-style safetensors shards, index, config, tokenizer, card.

Every output tensor's name, shape and dtype is known before the first one is computed, so each
shard's safetensors header (with all offsets) is written up front and each tensor's bytes go
straight to their offset with ``os.pwrite``: no shard is ever buffered in memory, and worker
threads may finish in any order. Everything is written inside a temporary directory that
:func:`npdecode.atomic.atomic_dir` renames into place at the end, once ``checksums.json``
(:func:`npdecode.integrity.write_checksums`) records every file's size and digest.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from npdecode.merge.tensor_io import SAFETENSORS_DTYPES

_DTYPE_CODES = {v: k for k, v in SAFETENSORS_DTYPES.items()}
_TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "spiece.model",
    "sentencepiece.bpe.model", "tokenizer.model", "vocab.json", "merges.txt", "vocab.txt",
    "added_tokens.json", "chat_template.jinja",
)  # fmt: skip


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        count = 1
        for dim in self.shape:
            count *= dim
        return count * torch.tensor([], dtype=self.dtype).element_size()


def shard_names(count: int) -> list[str]:
    """``model.safetensors`` or ``model-0000i-of-0000n.safetensors`` as transformers writes."""
    if count == 1:
        return ["model.safetensors"]
    return [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]


def assign_shards(specs: Sequence[TensorSpec], max_bytes: int) -> list[list[TensorSpec]]:
    """Greedy split in order; a shard closes before it would exceed ``max_bytes``."""
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for spec in specs:
        if shards[-1] and size + spec.nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += spec.nbytes
    return shards


class SafetensorsSink:
    """Pre-sized shard files in ``out_dir`` that accept tensors in any order."""

    def __init__(self, out_dir: Path, specs: Sequence[TensorSpec], max_shard_bytes: int):
        shards = assign_shards(specs, max_shard_bytes)
        self.files = shard_names(len(shards))
        self.weight_map: dict[str, str] = {}
        self._slots: dict[str, tuple[int, int, int, TensorSpec]] = {}  # name -> fd, offset, nbytes
        self._fds: list[int] = []
        self._lock = threading.Lock()
        self.total_bytes = sum(s.nbytes for s in specs)
        for file_name, shard in zip(self.files, shards, strict=True):
            header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
            offset = 0
            for spec in shard:
                header[spec.name] = {
                    "dtype": _DTYPE_CODES[spec.dtype], "shape": list(spec.shape),
                    "data_offsets": [offset, offset + spec.nbytes],
                }  # fmt: skip
                offset += spec.nbytes
            raw = json.dumps(header, separators=(",", ":")).encode()
            raw += b" " * (-len(raw) % 8)  # the data section starts 8-byte aligned
            fd = os.open(out_dir / file_name, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            self._fds.append(fd)
            os.write(fd, len(raw).to_bytes(8, "little") + raw)
            start = 8 + len(raw)
            os.ftruncate(fd, start + offset)
            for spec in shard:
                begin = header[spec.name]["data_offsets"][0]
                self._slots[spec.name] = (fd, start + begin, spec.nbytes, spec)
                self.weight_map[spec.name] = file_name

    def write(self, name: str, tensor: torch.Tensor) -> None:
        fd, offset, nbytes, spec = self._slots[name]
        if tuple(tensor.shape) != spec.shape or tensor.dtype != spec.dtype:
            raise RuntimeError(
                f"{name}: computed {tuple(tensor.shape)} {tensor.dtype}, planned {spec.shape} {spec.dtype}"
            )
        data = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
        view = memoryview(data)
        written = 0
        while written < nbytes:
            written += os.pwrite(fd, view[written:], offset + written)
        if hasattr(os, "posix_fadvise"):
            # start writing these pages back now, in the background, so that the fsync in
            # close() has little left to wait for (on Linux, DONTNEED on dirty pages starts
            # their writeback; the data stays correct either way)
            os.posix_fadvise(fd, offset, nbytes, os.POSIX_FADV_DONTNEED)

    def close(self) -> None:
        for fd in self._fds:
            os.fsync(fd)
            os.close(fd)
        self._fds = []

    def write_index(self, out_dir: Path) -> None:
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": dict(sorted(self.weight_map.items()))}
        (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")


class DictSink:
    """Collects the merged tensors in memory (the state-dict API)."""

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}
        self._lock = threading.Lock()

    def write(self, name: str, tensor: torch.Tensor) -> None:
        with self._lock:
            self.tensors[name] = tensor.detach().cpu()

    def close(self) -> None:
        pass


def write_config(out_dir: Path, config: dict[str, Any], dtype: torch.dtype | None) -> None:
    config = dict(config)
    if dtype is not None:
        name = str(dtype).removeprefix("torch.")
        config["torch_dtype" if "torch_dtype" in config else "dtype"] = name
    (out_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def copy_side_files(src_dir: Path | None, out_dir: Path, tokenizer: bool) -> None:
    """``generation_config.json`` and (when ``tokenizer``) the tokenizer files of ``src_dir``."""
    if src_dir is None:
        return
    names = ("generation_config.json", *(_TOKENIZER_FILES if tokenizer else ()))
    for name in names:
        if (src_dir / name).is_file():
            shutil.copyfile(src_dir / name, out_dir / name)


def write_recipe_and_card(
    out_dir: Path, recipe_dump: dict[str, Any], method: str, models: list[str], random_seed: int | None = None
) -> None:
    """``mergekit_config.yml`` (the recipe, MergeKit-readable; the seed as a comment: random
    methods are reproduced with ``npdecode merge --random-seed N``) and a model card."""
    text = yaml.safe_dump(recipe_dump, sort_keys=False)
    if random_seed is not None:
        text = f"# npdecode merge --random-seed {random_seed}\n{text}"
    (out_dir / "mergekit_config.yml").write_text(text, encoding="utf-8")
    listing = "\n".join(f"- `{m}`" for m in models)
    card = (
        "---\ntags:\n- merge\n- npdecode\n---\n# Merged model\n\n"
        f"Produced by `npdecode merge` with the **{method}** method from:\n\n{listing}\n\n"
        f"## Recipe\n\n```yaml\n{text}```\n"
    )
    (out_dir / "README.md").write_text(card, encoding="utf-8")
