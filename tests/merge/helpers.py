"""Shared test helpers: reading merged outputs back, loading them with transformers."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from npdecode.merge.tensor_io import open_model_dir


def read_tensors(directory: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint directory (safetensors or .bin), by name."""
    directory = Path(directory)
    reader = open_model_dir(str(directory), directory).reader
    return {name: reader.get(name).clone() for name in reader.keys()}  # noqa: SIM118 - a reader, not a dict


def header_specs(directory: Path) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """``{name: (shape, dtype)}`` from the safetensors headers of ``directory``."""
    index = json.loads((directory / "model.safetensors.index.json").read_text())
    out = {}
    for file in set(index["weight_map"].values()):
        with safe_open(str(directory / file), "pt") as handle:
            for name in handle.keys():  # noqa: SIM118 - safe_open handles are not iterable
                t = handle.get_tensor(name)
                out[name] = (tuple(t.shape), t.dtype)
    return out


def load_hf(family: str, directory: Path):
    """The merged checkpoint loaded by transformers' auto classes."""
    import transformers as tf

    if family == "bert2bert":
        return tf.EncoderDecoderModel.from_pretrained(str(directory))
    if family in ("llama", "gpt2"):
        return tf.AutoModelForCausalLM.from_pretrained(str(directory))
    return tf.AutoModelForSeq2SeqLM.from_pretrained(str(directory))


def logits_of(family: str, model, vocab: int = 40) -> torch.Tensor:
    """Logits of a short random input (encoder-decoder models get decoder inputs too)."""
    ids = torch.randint(3, vocab, (2, 5), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        if family in ("llama", "gpt2"):
            return model(input_ids=ids).logits
        return model(input_ids=ids, decoder_input_ids=ids[:, :3]).logits


def linear_recipe(models: list[Path], weights: list[float], **extra) -> dict:
    return {
        "merge_method": "linear",
        "models": [{"model": str(m), "parameters": {"weight": w}} for m, w in zip(models, weights)],
        **extra,
    }
