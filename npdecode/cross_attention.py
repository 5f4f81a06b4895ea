"""Query-grouped cross-attention for beam decoding: one copy of the encoder keys/values per query.

In beam search every query has up to ``beam`` decoder rows, and a plain decoder keeps the
cross-attention keys/values (and the encoder states) once *per row*: ``beam`` identical copies
that every step reads (the ``(rows, heads, 1, T)`` attention runs as ``rows · heads`` one-row
problems) and that every change of the batch's composition gathers again. Here the decoder runs
with the encoder states of the queries only (B rows); the cross-attention of each layer takes
the ``(N, heads, 1, d)`` queries of the N decoder rows, groups them by the query they belong to
(``(B, heads, c, d)``, padded where queries have fewer than ``c`` rows) and attends once per
query. Self-attention is unchanged.

It plugs in through transformers' attention-function registry: during a decoder step the
decoder's config names :data:`GROUPED` (a wrapper around ``sdpa``); every attention module that
is not a cross-attention of that decoder goes straight to ``sdpa``. Families whose attention
does not dispatch through the registry are detected on the first step (which is correct either
way: one row per query) and decode the plain way.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

GROUPED = "npdecode_grouped_sdpa"
_BASE = "sdpa"
_CROSS_NAMES = ("encoder_attn", "EncDecAttention")  # BART/mBART/…, T5/mT5 cross-attention modules
_local = threading.local()


@dataclass
class _Groups:
    """How the N decoder rows of one step map onto the B query rows of the encoder states."""

    cross: frozenset[int]  # id() of the decoder's cross-attention modules
    n_rows: int
    select: torch.Tensor | None  # query rows present in this step (None: all B, in order)
    n_groups: int  # P: queries present
    width: int  # c: most rows of one query
    order: torch.Tensor | None  # rows sorted by query (None: already sorted)
    group: torch.Tensor | None  # (N,) group of each sorted row (None: uniform, c rows per query)
    slot: torch.Tensor | None  # (N,) position of each sorted row within its group
    calls: int = 0


def cross_attention_modules(decoder: Any) -> list[Any]:
    """The decoder's cross-attention modules (the ones that read encoder keys/values)."""
    found = []
    for name, module in decoder.named_modules():
        last = name.rsplit(".", 1)[-1]
        if last in _CROSS_NAMES or name.endswith("crossattention.self"):  # BERT: crossattention.self
            found.append(module)
    return found


def supported(decoder: Any) -> bool:
    """Whether grouping can be tried: the decoder runs ``sdpa`` and has cross-attention modules."""
    if not _register():
        return False
    return getattr(decoder.config, "_attn_implementation", None) == _BASE and bool(cross_attention_modules(decoder))


def groups_for(rows_query: torch.Tensor, n_queries: int, cross: frozenset[int]) -> _Groups:
    """The grouping of one step: ``rows_query`` (N,) is the query (encoder row) of each decoder row."""
    n = len(rows_query)
    order = None
    if n > 1 and not bool((rows_query[1:] >= rows_query[:-1]).all()):
        rows_query, order = torch.sort(rows_query, stable=True)
    present, counts = torch.unique_consecutive(rows_query, return_counts=True)
    p, width = len(present), int(counts.max()) if n else 0
    select = None if p == n_queries else present
    group = slot = None
    if p * width != n:  # queries with fewer rows: pad each group to `width`
        group = torch.repeat_interleave(torch.arange(p, device=rows_query.device), counts)
        first = torch.cumsum(counts, 0) - counts
        slot = torch.arange(n, device=rows_query.device) - first[group]
    return _Groups(cross, n, select, p, width, order, group, slot)


@contextlib.contextmanager
def grouped(configs: list[Any], groups: _Groups) -> Iterator[_Groups]:
    """Run the decoder with grouped cross-attention: ``configs`` (the decoder's configs) name
    :data:`GROUPED` inside the block and get their attention implementation back when the last
    thread using them leaves (other threads' attention is unaffected: without their own groups
    it goes straight to ``sdpa``)."""
    with _swap_lock:
        for c in configs:
            count, saved = _swapped.get(id(c), (0, None))
            if count == 0:
                saved = c._attn_implementation
                c._attn_implementation = GROUPED
            _swapped[id(c)] = (count + 1, saved)
    _local.groups = groups
    try:
        yield groups
    finally:
        _local.groups = None
        with _swap_lock:
            for c in configs:
                count, saved = _swapped.pop(id(c))
                if count == 1:
                    c._attn_implementation = saved
                else:
                    _swapped[id(c)] = (count - 1, saved)


_swap_lock = threading.Lock()
_swapped: dict[int, tuple[int, Any]] = {}  # id(config) -> (threads inside `grouped`, its own implementation)


def _grouped_attention(
    module, query, key, value, attention_mask, dropout=0.0, scaling=None, position_bias=None, **kwargs
):
    """The registered attention function: grouped for the active decoder's cross-attention, ``sdpa`` otherwise."""
    g: _Groups | None = getattr(_local, "groups", None)
    if g is None or id(module) not in g.cross:
        return _sdpa(
            module,
            query,
            key,
            value,
            attention_mask,
            dropout=dropout,
            scaling=scaling,
            position_bias=position_bias,
            **kwargs,
        )
    g.calls += 1
    n, heads, q_len, dim = query.shape
    if q_len != 1 or n != g.n_rows:
        raise RuntimeError(f"grouped cross-attention expects one new position per row; got query {tuple(query.shape)}")
    q = query.reshape(n, heads, dim)
    if g.order is not None:
        q = q[g.order]
    mask = attention_mask
    if g.select is not None:
        key, value = key.index_select(0, g.select), value.index_select(0, g.select)
        if mask is not None and mask.shape[0] > 1:
            mask = mask.index_select(0, g.select)
    if position_bias is not None:  # T5: additive bias (zeros for cross-attention) on top of the padding mask
        if position_bias.shape[0] > 1 and g.select is not None:
            position_bias = position_bias.index_select(0, g.select)
        if mask is None:
            mask = position_bias
        elif mask.dtype == torch.bool:
            mask = position_bias.masked_fill(~mask, torch.finfo(position_bias.dtype).min)
        else:
            mask = position_bias + mask
    p, c = g.n_groups, g.width
    if g.group is None:
        qg = q.reshape(p, c, heads, dim)
    else:
        qg = q.new_zeros(p, c, heads, dim)
        qg[g.group, g.slot] = q
    out = F.scaled_dot_product_attention(
        qg.transpose(1, 2), key, value, attn_mask=mask, dropout_p=dropout, scale=scaling
    )  # (P, heads, c, dim)
    out = out.transpose(1, 2)
    out = out.reshape(n, heads, dim) if g.group is None else out[g.group, g.slot]
    if g.order is not None:
        out = torch.empty_like(out).index_copy_(0, g.order, out)
    return out.reshape(n, 1, heads, dim), None


_registered: bool | None = None
_sdpa: Any = None  # transformers' own sdpa attention function, looked up once at registration


def _register() -> bool:
    """Register :data:`GROUPED` (attention and mask functions) with transformers; False if it cannot."""
    global _registered, _sdpa
    if _registered is None:
        try:
            from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
            from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

            AttentionInterface.register(GROUPED, _grouped_attention)
            ALL_MASK_ATTENTION_FUNCTIONS.register(GROUPED, ALL_MASK_ATTENTION_FUNCTIONS[_BASE])
            _sdpa = ALL_ATTENTION_FUNCTIONS[_BASE]
            _registered = True
        except (ImportError, KeyError, AttributeError):
            _registered = False
    return _registered
