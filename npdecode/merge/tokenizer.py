"""Output vocabulary for ``tokenizer: {source: union | base | <model>}`` and the alignment of
every tensor with a vocabulary axis (embeddings, output heads, ``final_logits_bias``) to it.

Each output token id gets, for each model, either that model's own row (the token exists in
every model and is not ``force``d) or one shared default row: the recipe's per-token source
(``zero``, a model, or ``{kind: model_token, model, token|token_id}``), else the base model's
row, else the mean of the rows of the models that have the token. Rows past the vocabulary
(``pad_to_multiple_of``, or a base embedding larger than its tokenizer) take each model's row
at the same index when it has one, zero otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from npdecode.errors import NpdecodeError
from npdecode.merge.config import TokenizerConfig, TokenSource
from npdecode.merge.tensor_io import ModelSource


@dataclass
class VocabPlan:
    """How every model's vocabulary rows map onto the output's ``out_rows`` rows."""

    out_rows: int
    own: dict[str, torch.Tensor]  # ref -> (out_rows,) int64 source row or -1
    defaults: torch.Tensor  # (D,) output ids that take one shared default row
    contrib: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]  # ref -> (pos in D, row, weight)
    tokenizer: Any  # the output tokenizer (saved by the writer)

    def align(self, tensors: Mapping[str, torch.Tensor], axis: int) -> dict[str, torch.Tensor]:
        """Each model's tensor with its vocabulary ``axis`` re-indexed to the output vocabulary."""
        moved = {ref: t.movedim(axis, 0) for ref, t in tensors.items()}
        any_t = next(iter(moved.values()))
        tail, dtype = any_t.shape[1:], any_t.dtype
        default = torch.zeros((len(self.defaults), *tail), dtype=torch.float64, device=any_t.device)
        for ref, rows in moved.items():
            pos, src, weight = self.contrib.get(ref, (None, None, None))
            if pos is not None and len(pos):
                w = weight.to(default.device).view(-1, *([1] * len(tail)))
                default.index_add_(0, pos.to(default.device), rows[src.to(rows.device)].double() * w)
        out = {}
        for ref, rows in moved.items():
            idx = self.own[ref].to(rows.device)
            aligned = torch.zeros((self.out_rows, *tail), dtype=dtype, device=rows.device)
            valid = idx >= 0
            aligned[valid] = rows[idx[valid]]
            aligned[self.defaults.to(rows.device)] = default.to(dtype)
            out[ref] = aligned.movedim(0, axis)
        return out


def _load_tokenizer(source: ModelSource, trust_remote_code: bool) -> Any:
    from transformers import AutoTokenizer

    if source.path is None:
        raise NpdecodeError(f"model {source.ref!r} has no directory to load a tokenizer from")
    try:
        return AutoTokenizer.from_pretrained(str(source.path), trust_remote_code=trust_remote_code)
    except Exception as err:  # noqa: BLE001 - missing files, remote code refused...: one message
        raise NpdecodeError(f"model {source.ref!r}: cannot load its tokenizer ({str(err).splitlines()[0]})") from None


def _output_tokenizer(settings: TokenizerConfig, toks: Mapping[str, Any], base: str) -> Any:
    if settings.source == "base":
        return toks[base]
    if settings.source != "union":
        if settings.source not in toks:
            raise NpdecodeError(f"tokenizer.source {settings.source!r} is not one of the recipe's models")
        return toks[settings.source]
    out = toks[base]
    seen = set(out.get_vocab())
    extra = []
    for tok in toks.values():
        for token, _ in sorted(tok.get_vocab().items(), key=lambda kv: kv[1]):
            if token not in seen:
                seen.add(token)
                extra.append(token)
    if extra:
        out = out.__class__.from_pretrained(str(out.name_or_path))  # a copy: never mutate the base's
        out.add_tokens(extra)
    return out


def _default_source(
    token: str, spec: TokenSource | str | None, vocabs: Mapping[str, dict[str, int]], base: str
) -> list[tuple[str, int]]:
    """(model, row) pairs whose mean is the shared row of ``token``; empty means zero."""
    if isinstance(spec, str):
        spec = TokenSource(kind="model_token", model=spec, token=token)
    if spec is not None:
        if spec.kind == "zero":
            return []
        if spec.model not in vocabs:
            raise NpdecodeError(f"tokenizer.tokens.{token}: model {spec.model!r} is not one of the recipe's models")
        row = spec.token_id if spec.token_id is not None else vocabs[spec.model].get(spec.token or token)
        if row is None:
            raise NpdecodeError(f"tokenizer.tokens.{token}: model {spec.model!r} has no token {spec.token or token!r}")
        return [(spec.model, row)]
    if token in vocabs[base]:
        return [(base, vocabs[base][token])]
    return [(ref, v[token]) for ref, v in vocabs.items() if token in v]


def plan_vocab(
    settings: TokenizerConfig,
    sources: Mapping[str, ModelSource],
    base: str,
    rows: Mapping[str, int],
    trust_remote_code: bool = False,
) -> VocabPlan:
    """The output vocabulary and, per model (``rows[ref]`` embedding rows), how to fill it."""
    toks = {ref: _load_tokenizer(src, trust_remote_code) for ref, src in sources.items()}
    out_tok = _output_tokenizer(settings, toks, base)
    out_vocab = out_tok.get_vocab()
    vocabs = {ref: {t: i for t, i in tok.get_vocab().items() if i < rows[ref]} for ref, tok in toks.items()}
    n_vocab = max(out_vocab.values()) + 1
    out_rows = max(n_vocab, rows[base]) if settings.source == "base" else n_vocab
    if settings.pad_to_multiple_of:
        out_rows = -(-out_rows // settings.pad_to_multiple_of) * settings.pad_to_multiple_of
    for token in settings.tokens:
        if token not in out_vocab:
            raise NpdecodeError(f"tokenizer.tokens: {token!r} is not in the output vocabulary")
    own = {}
    for ref, vocab in vocabs.items():
        idx = torch.full((out_rows,), -1, dtype=torch.int64)
        for token, out_id in out_vocab.items():
            if token in vocab:
                idx[out_id] = vocab[token]
        extra = torch.arange(n_vocab, out_rows)
        idx[extra[extra < rows[ref]]] = extra[extra < rows[ref]]
        own[ref] = idx
    defaults: list[int] = []
    pairs: dict[str, list[tuple[int, int, float]]] = {ref: [] for ref in vocabs}
    for token, out_id in sorted(out_vocab.items(), key=lambda kv: kv[1]):
        spec = settings.tokens.get(token)
        if not (spec is not None and spec.force) and all(token in v for v in vocabs.values()):
            continue
        chosen = _default_source(token, spec.source if spec else None, vocabs, base)
        for ref, row in chosen:
            pairs[ref].append((len(defaults), row, 1.0 / len(chosen)))
        defaults.append(out_id)
    contrib = {
        ref: (
            torch.tensor([p for p, _, _ in lst], dtype=torch.int64),
            torch.tensor([r for _, r, _ in lst], dtype=torch.int64),
            torch.tensor([w for _, _, w in lst], dtype=torch.float64),
        )
        for ref, lst in pairs.items()
    }
    return VocabPlan(out_rows, own, torch.tensor(defaults, dtype=torch.int64), contrib, out_tok)


def check_same_vocab(name: str, shapes: Sequence[tuple[str, tuple[int, ...]]], axis: int) -> None:
    """Without a tokenizer setting, every model's vocabulary axis must have one size."""
    sizes = {ref: shape[axis] for ref, shape in shapes}
    if len(set(sizes.values())) > 1:
        listing = ", ".join(f"{r}: {s}" for r, s in sizes.items())
        raise NpdecodeError(
            f"vocabulary sizes differ for {name!r} ({listing}); add 'tokenizer: {{source: union}}' "
            "(or base / a model) to the recipe to align the vocabularies"
        )
