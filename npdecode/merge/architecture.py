"""Architecture knowledge by tensor name: layer stacks, modules, tied weights, layer counts.

Nothing here is a per-model table of every tensor: a layer is any ``<stack>.<index>.<rest>``
name whose stack ends in ``layers``/``layer``/``block``/``blocks``/``h`` (T5, BART, BERT,
Llama, GPT-2 all follow it), and every other tensor is merged under its own name.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

_LAYER = re.compile(r"^(?P<stack>(?:.*?\.)?(?:layers|layer|block|blocks|h))\.(?P<index>\d+)\.(?P<rest>.+)$")
# Tensors that sit before the first layer (the others come after the last one).
_PRE_LAYER = re.compile(r"embed|shared|wte|wpe|word_embeddings|position_embeddings|token_type")

_INPUT_EMBEDDINGS = (
    "shared.weight", "model.shared.weight", "model.embed_tokens.weight", "transformer.wte.weight",
    "embeddings.word_embeddings.weight", "bert.embeddings.word_embeddings.weight",
    "model.decoder.embed_tokens.weight", "gpt_neox.embed_in.weight",
)  # fmt: skip
_OUTPUT_HEADS = ("lm_head.weight", "cls.predictions.decoder.weight", "embed_out.weight")
_LAYER_COUNT_KEYS = {
    "decoder": ("num_decoder_layers", "decoder_layers", "num_hidden_layers", "n_layer"),
    "encoder": ("num_layers", "encoder_layers", "num_hidden_layers", "n_layer"),
    None: ("num_hidden_layers", "n_layer", "num_layers"),
}


@dataclass(frozen=True)
class LayerName:
    stack: str
    index: int
    rest: str

    def renumber(self, index: int) -> str:
        return f"{self.stack}.{index}.{self.rest}"


def parse_layer(name: str) -> LayerName | None:
    """``decoder.block.3.layer.0.SelfAttention.q.weight`` -> (``decoder.block``, 3, rest)."""
    match = _LAYER.match(name)
    if match is None:
        return None
    return LayerName(match["stack"], int(match["index"]), match["rest"])


def module_of(name: str) -> str:
    """``encoder`` / ``decoder`` for tensors under those prefixes, ``shared`` otherwise."""
    head = name.removeprefix("model.").split(".", 1)[0]
    return head if head in ("encoder", "decoder") else "shared"


def is_pre_layer(name: str) -> bool:
    """Whether a tensor outside the layer stacks comes before them (embeddings)."""
    return _PRE_LAYER.search(name) is not None


def stacks(names: Iterable[str]) -> dict[str, int]:
    """``{stack prefix: number of layers}`` found among ``names``."""
    out: dict[str, int] = {}
    for name in names:
        layer = parse_layer(name)
        if layer is not None:
            out[layer.stack] = max(out.get(layer.stack, 0), layer.index + 1)
    return out


def _sub_config(config: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    side = name.split(".", 1)[0]
    nested = config.get(side)
    return nested if isinstance(nested, Mapping) and "model_type" in nested else config


def tied_aliases(
    config: Mapping[str, Any], keys: Iterable[str], shared_groups: Iterable[list[str]] = ()
) -> dict[str, str]:
    """``{alias: source}``: names that are the same tensor as ``source`` in this model.

    Candidates are the encoder/decoder ``embed_tokens`` of a model with ``shared`` embeddings
    (T5, BART) and the output head of a model with input embeddings. A candidate is an alias
    when the checkpoint lacks it (saved once, tied on load) or the config ties it
    (``tie_word_embeddings``, true by default in transformers); a candidate saved separately
    in an untied model (t5-v1.1 in transformers 5) is a tensor of its own. Names saved on one
    storage (``.bin``) are always one tensor.
    """
    keys = set(keys)
    candidates: list[tuple[str, str, Mapping[str, Any]]] = []
    for prefix in ("", "model."):
        if f"{prefix}shared.weight" in keys:
            for side in ("encoder", "decoder"):
                candidates.append((f"{prefix}{side}.embed_tokens.weight", f"{prefix}shared.weight", config))
    for prefix in ("", "encoder.", "decoder."):
        sub = _sub_config(config, prefix) if prefix else config
        source = next((prefix + n for n in _INPUT_EMBEDDINGS if prefix + n in keys), None)
        if source is not None:
            candidates += [(prefix + head, source, sub) for head in _OUTPUT_HEADS]
    aliases = {
        alias: source
        for alias, source, sub in candidates
        if alias != source and (alias not in keys or sub.get("tie_word_embeddings", True))
    }
    for group in shared_groups:
        primary = next((g for g in group if g not in aliases), group[0])
        aliases.update({g: primary for g in group if g != primary})
    return aliases


def vocab_rows(config: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]]) -> int | None:
    """Rows of the input embedding (the model's vocabulary axis size), or the config's."""
    for name in _INPUT_EMBEDDINGS:
        for prefix in ("", "decoder.", "encoder."):
            if prefix + name in shapes:
                return shapes[prefix + name][0]
    value = config.get("vocab_size")
    return int(value) if isinstance(value, int) else None


def vocab_axis(name: str, shape: tuple[int, ...], rows: int | None) -> int | None:
    """The axis of ``name`` that indexes the vocabulary (embeddings, heads, logit biases)."""
    if rows is None or parse_layer(name) is not None or "position" in name:
        return None
    for axis in (0, len(shape) - 1) if shape else ():
        if shape[axis] == rows:
            return axis
    return None


def update_layer_counts(config: dict[str, Any], counts: Mapping[str, tuple[int, int]]) -> dict[str, Any]:
    """A copy of ``config`` whose layer counts follow ``{stack: (old, new)}``."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in config.items()}
    for stack, (old, new) in counts.items():
        if old == new:
            continue
        sub = _sub_config(out, stack)
        side = "decoder" if "decoder" in stack else "encoder" if "encoder" in stack else None
        if sub is not out:
            side = None  # a nested encoder/decoder config counts its own layers
        for key in _LAYER_COUNT_KEYS[side]:
            if sub.get(key) == old:
                sub[key] = new  # type: ignore[index]
                if side is not None:
                    break
    return out
