"""``model+lora`` references: a LoRA adapter folded into its base model's weights, lazily.

The adapter is read from PEFT's on-disk format (``adapter_config.json`` +
``adapter_model.safetensors`` or ``.bin``) without importing PEFT: for a target weight
``W`` (out, in) with ``lora_A`` (r, in) and ``lora_B`` (out, r) the merged weight is
``W + s * B @ A`` with ``s = lora_alpha / r`` (``lora_alpha / sqrt(r)`` with rsLoRA). Embedding
adapters (``lora_embedding_A`` (r, V), ``lora_embedding_B`` (d, r)) add ``s * (B @ A)^T``.
Tensors the adapter saves whole (``modules_to_save``) replace the base ones.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch

from npdecode.errors import NpdecodeError
from npdecode.merge.tensor_io import SafetensorsReader, TensorReader, TorchBinReader

_LORA_KEY = re.compile(
    r"^(?:base_model\.model\.)?(?P<module>.+)\.(?P<kind>lora_A|lora_B|lora_embedding_A|lora_embedding_B)"
    r"(?:\.default)?(?:\.weight)?$"
)


def split_lora_ref(ref: str) -> tuple[str, str | None]:
    """``"model+adapter"`` -> (model, adapter); a path that exists as given is never split."""
    if "+" not in ref or Path(ref).expanduser().exists():
        return ref, None
    model, adapter = ref.rsplit("+", 1)
    return model, adapter


class LoraReader(TensorReader):
    """``base`` with the adapter in ``adapter_dir`` merged in, one tensor at a time."""

    def __init__(self, base: TensorReader, adapter_dir: Path):
        config_path = adapter_dir / "adapter_config.json"
        if not config_path.is_file():
            raise NpdecodeError(f"{adapter_dir}: not a LoRA adapter (adapter_config.json is missing)")
        cfg = json.loads(config_path.read_text(encoding="utf-8"))
        rank, alpha = int(cfg.get("r", 8)), float(cfg.get("lora_alpha", 8))
        self._scale = alpha / math.sqrt(rank) if cfg.get("use_rslora") else alpha / rank
        self._fan_in_fan_out = bool(cfg.get("fan_in_fan_out", False))
        files = sorted(adapter_dir.glob("adapter_model*.safetensors"))
        self._adapter: TensorReader = (
            SafetensorsReader(files) if files else TorchBinReader(sorted(adapter_dir.glob("adapter_model*.bin")))
        )
        self._base = base
        self._pairs: dict[str, dict[str, str]] = {}  # base weight name -> {kind: adapter key}
        self._replaced: dict[str, str] = {}
        base_keys = set(base.keys())
        for key in self._adapter.keys():  # noqa: SIM118 - a TensorReader, not a dict
            match = _LORA_KEY.match(key)
            if match:
                target = f"{match['module']}.weight"
                self._pairs.setdefault(target, {})[match["kind"]] = key
                continue
            name = key.removeprefix("base_model.model.").replace(".modules_to_save.default", "")
            if name in base_keys:
                self._replaced[name] = key
        missing = [t for t in self._pairs if t not in base_keys]
        if missing:
            raise NpdecodeError(f"{adapter_dir}: adapter targets {missing[0]!r}, which the base model lacks")

    def keys(self) -> list[str]:
        return self._base.keys()

    def shape(self, name: str) -> tuple[int, ...]:
        return self._base.shape(name)

    def dtype(self, name: str) -> torch.dtype:
        return self._base.dtype(name)

    def get(self, name: str) -> torch.Tensor:
        if name in self._replaced:
            return self._adapter.get(self._replaced[name])
        weight = self._base.get(name)
        pair = self._pairs.get(name)
        if pair is None:
            return weight
        if "lora_A" in pair:
            a, b = self._adapter.get(pair["lora_A"]).double(), self._adapter.get(pair["lora_B"]).double()
            delta = b @ a  # (out, r) @ (r, in) -> (out, in)
            if self._fan_in_fan_out:  # GPT-2 Conv1D stores (in, out)
                delta = delta.T
        else:
            a = self._adapter.get(pair["lora_embedding_A"]).double()
            b = self._adapter.get(pair["lora_embedding_B"]).double()
            delta = (b @ a).T  # (d, r) @ (r, V) -> (V, d)
        return (weight.double() + self._scale * delta).to(weight.dtype)
