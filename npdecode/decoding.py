"""Batched constrained beam search over a CSR prefix trie (no per-step Python callback).

Each step: one KV-cached decoder step for all live rows of all queries, the full normalizer
``logsumexp(logits)`` per row (exact scores), then a *sparse* expansion: only the trie edges out
of each row's node are scored, so a hypothesis can never leave the trie and the cost of masking
is the number of allowed children, not the vocabulary. Children that end a stored sequence
become finished hypotheses (all of them, so ``k`` may exceed ``beam``); the best ``beam``
children that can still be extended stay live per query.

Scores are exact by default. An approximate normalizer (:mod:`npdecode.normalizer`, FAISS IVF
top-k) may replace the full ``logsumexp`` on steps where the allowed edges are few: their
logits are then read one by one instead of the whole ``h · CEᵀ`` product.

Modes (see :func:`make_scorer`): Np model + CE-id trie; Np model + token-id trie (a token's
score is the log-sum-exp over its CE rows; the next decoder input is the token's best CE row);
vanilla model + token-id trie (GENRE-style).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from npdecode.errors import NpdecodeError
from npdecode.trie import TorchTrie, Trie, group_rows_by_token


class _IdScorer:
    """Edges are output ids (CE rows for Np, tokens for vanilla): score = log_softmax at that id."""

    width = 1  # logits read per edge

    def edge_scores(self, logits: torch.Tensor, lse: torch.Tensor, row: torch.Tensor, ids: torch.Tensor):
        return logits[row, ids] - lse[row]

    def next_inputs(self, logits: torch.Tensor, row: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return ids


class _TokenOverCeScorer:
    """Token-id trie over an Np model: ``log p(token) = logsumexp(logits[rows of token]) - lse``."""

    def __init__(self, ce_token_ids: torch.Tensor):
        tokens, ptr, rows = group_rows_by_token(ce_token_ids.cpu().numpy())
        counts = np.diff(ptr)
        kmax = int(counts.max()) if len(counts) else 1
        padded = np.full((len(tokens), kmax), -1, dtype=np.int64)  # (G, kmax) CE rows per token
        padded[np.repeat(np.arange(len(tokens)), counts), np.arange(len(rows)) - np.repeat(ptr[:-1], counts)] = rows
        lookup = np.full(int(tokens.max()) + 1 if len(tokens) else 1, -1, dtype=np.int64)
        lookup[tokens] = np.arange(len(tokens))
        device = ce_token_ids.device
        self.group_rows = torch.as_tensor(padded, device=device)
        self.token_to_group = torch.as_tensor(lookup, device=device)
        self.width = kmax  # logits read per edge

    def _gather(self, logits: torch.Tensor, row: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        g = self.token_to_group[ids]
        if bool((g < 0).any()):
            raise NpdecodeError("the token trie holds a token with no CE row; rebuild the index (trie and CE disagree)")
        rows = self.group_rows[g]  # (E, kmax)
        vals = logits[row[:, None], rows.clamp_min(0)].masked_fill(rows < 0, float("-inf"))
        return vals, rows

    def edge_scores(self, logits, lse, row, ids):
        vals, _ = self._gather(logits, row, ids)
        return torch.logsumexp(vals, dim=1) - lse[row]

    def next_inputs(self, logits, row, ids):
        vals, rows = self._gather(logits, row, ids)
        return rows.gather(1, vals.argmax(dim=1, keepdim=True)).squeeze(1)


class _GroupScorer(_IdScorer):
    """The authors' "group" mode: a token-id trie over an Np model where any CE row of an allowed
    token may be emitted. Each token edge becomes one edge per CE row of the token (scored and fed
    back as that row), so hypotheses are row sequences; several may spell one document, and the
    document keeps the best of them (``duplicates``: merged when results are collected)."""

    duplicates = True

    def __init__(self, ce_token_ids: torch.Tensor):
        grouped = _TokenOverCeScorer(ce_token_ids)
        self.group_rows, self.token_to_group = grouped.group_rows, grouped.token_to_group

    def expand(self, row: torch.Tensor, ids: torch.Tensor, child: torch.Tensor):
        """Token edges ``(row, token, child)`` -> row edges ``(row, CE row, child)``."""
        g = self.token_to_group[ids]
        if bool((g < 0).any()):
            raise NpdecodeError("the token trie holds a token with no CE row; rebuild the index (trie and CE disagree)")
        rows = self.group_rows[g]  # (E, kmax), -1 pads
        valid = rows >= 0
        width = valid.sum(1)
        return row.repeat_interleave(width), rows[valid], child.repeat_interleave(width)


def make_scorer(model: Any, trie: Trie, *, group: bool = False) -> _IdScorer | _TokenOverCeScorer | _GroupScorer:
    """Pick the scoring rule from the model kind and the trie's id space (``group``: the group
    mode over a token trie, Np models only)."""
    is_np = hasattr(model, "ce_token_ids")
    if group:
        if trie.id_space != "token" or not is_np:
            raise NpdecodeError("trie mode 'group' needs an Np model and the index's token trie")
        return _GroupScorer(model.ce_token_ids)
    if trie.id_space == "token" and is_np:
        return _TokenOverCeScorer(model.ce_token_ids)
    if trie.id_space == "ce" and not is_np:
        raise NpdecodeError("a CE-id trie needs an Np model; the vanilla model decodes over a token-id trie")
    return _IdScorer()


@dataclass
class _Finished:
    query: list[torch.Tensor]
    node: list[torch.Tensor]
    score: list[torch.Tensor]


def _rank_within(groups: torch.Tensor, key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Order sorting by (group asc, key desc, index asc) and each element's rank inside its group."""
    order = torch.argsort(key, descending=True, stable=True)
    order = order[torch.argsort(groups[order], stable=True)]
    g = groups[order]
    start = torch.ones_like(g, dtype=torch.bool)
    start[1:] = g[1:] != g[:-1]
    pos = torch.arange(len(g), device=g.device)
    first = torch.cummax(torch.where(start, pos, torch.zeros_like(pos)), 0).values
    return order, pos - first


def _rank_key(scores: torch.Tensor) -> torch.Tensor:
    """Scores for ranking: NaN -> -inf, and -inf -> the lowest finite float so that allowed
    hypotheses whose every score is -inf still rank (nothing else competes with them)."""
    s = torch.nan_to_num(scores, nan=float("-inf"))
    return torch.where(torch.isneginf(s), torch.finfo(s.dtype).min, s)


def _kth_best(query: torch.Tensor, score: torch.Tensor, n_queries: int, k: int) -> torch.Tensor:
    """Per query, the k-th best finished score (NaN where fewer than k are finished)."""
    out = torch.full((n_queries,), float("nan"), device=score.device)
    if len(score):
        order, rank = _rank_within(query, _rank_key(score))
        hit = rank == k - 1
        out[query[order][hit]] = score[order][hit]
    return out


def _select_live(
    query: torch.Tensor, row: torch.Tensor, cand: torch.Tensor, extendable: torch.Tensor, n_rows: int, beam: int
) -> torch.Tensor:
    """Edge indices of the best ``beam`` extendable children per query, grouped by query.

    A row's ``beam`` best children contain every child of that row that can make its query's
    beam, so a per-row ``topk`` over a padded (rows, max children) view first cuts the
    candidates (at the root: all first ids of all queries) to at most ``rows · beam`` before
    the exact (query asc, score desc, index asc) ranking. Edges come grouped by row (``expand``).
    """
    key = _rank_key(cand)
    counts = torch.bincount(row, minlength=n_rows)
    width = int(counts.max()) if len(row) else 0
    if width > beam:
        first = torch.cumsum(counts, 0) - counts
        pos = torch.arange(len(row), device=row.device) - first[row]
        padded = torch.full((n_rows, width), float("-inf"), device=key.device)
        padded[row[extendable], pos[extendable]] = key[extendable]  # rank keys are finite: -inf = absent
        top_key, top_pos = padded.topk(beam, dim=1)
        ok = top_key > float("-inf")
        cands = (first[:, None] + top_pos)[ok].sort().values  # edge order: ties break by index
    else:
        cands = torch.nonzero(extendable).squeeze(1)
    order, rank = _rank_within(query[row[cands]], key[cands])
    return cands[order[rank < beam]]


def _step(model: Any, prev: torch.Tensor, state: Any) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """One decoder step: fp32 logits (N, V_out), the exact normalizer ``logsumexp`` (N,), the state.

    Np models fuse the normalizer into the CE product (``_step_normalized``) unless their
    ``fused_normalizer`` is False; any other model (vanilla, test doubles) goes through its
    public ``step``.
    """
    if getattr(model, "fused_normalizer", False):
        return model._step_normalized(prev, state)
    logits, state = model.step(prev, state)
    logits = logits.float()  # scores in fp32 even for bf16 models (no-op for fp32)
    return logits, torch.logsumexp(logits, dim=-1), state


def _sparse_step(
    model: Any, prev: torch.Tensor, state: Any, normalizer: Any, scorer: Any, row: torch.Tensor, ids: torch.Tensor
) -> tuple[Any, torch.Tensor, Any]:
    """A step with the approximate normalizer: exact logits for the allowed edges only, and per row
    ``max(normalizer.lse(h), best allowed logit)`` (so no edge scores above 0). Returns
    ``(logits (lazy), edge scores (E,), state)``."""
    from npdecode.normalizer import SparseLogits

    hidden, state = model.step_scaled_hidden(prev, state)
    logits = SparseLogits(hidden, model.table())
    raw = torch.nan_to_num(
        scorer.edge_scores(logits, torch.zeros(len(hidden), device=hidden.device), row, ids), nan=float("-inf")
    )
    lse = normalizer.lse(hidden)
    lse = lse.scatter_reduce(0, row, raw, reduce="amax", include_self=True)
    return logits, raw - lse[row], state


def _sparse_pays(n_edges: int, n_rows: int, vocab: int, width: int) -> bool:
    """Whether reading the allowed edges' logits one by one (a gather, ~4x slower per FLOP than a
    matmul) costs less than the dense ``h · CEᵀ`` product over all ``vocab`` rows."""
    return 4 * n_edges * width <= n_rows * vocab


@torch.inference_mode()
def beam_search(
    model: Any,
    trie: TorchTrie,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    k: int,
    beam: int,
    length_penalty: float = 0.0,
    scorer: Any = None,
    normalizer: Any = None,
    memory: Any = None,
    fill: bool = False,
) -> list[list[tuple[int, float]]]:
    """Constrained beam search for one batch of B encoded queries; top-``k`` (node, score) per query.

    Scores are sums of log-probabilities; with ``length_penalty`` α > 0 a finished hypothesis of
    L steps scores ``sum / L**α``. Returns, per query, ``(terminal node, score)`` best first.
    ``normalizer`` (an :class:`~npdecode.normalizer.IvfNormalizer`, Np models only) approximates
    the normalizer on steps where that pays; None keeps every score exact.
    ``memory`` (a :class:`~npdecode.memory.CEMemory` over this trie): hypotheses rank by
    ``score / L**α + weight * H(node)`` and finished ones score ``score / L**α + weight * m(doc)``.
    ``fill``: a query that finished fewer than ``k`` documents gets the rest ranked past them by
    :func:`_fill` from the scores this search computed anyway (the finished ones are unchanged).
    """
    scorer = scorer or make_scorer(model, trie.trie)
    n_q = input_ids.shape[0]
    device = input_ids.device
    enc, enc_mask = model.encode(input_ids, attention_mask)
    look = memory.lookahead(enc, enc_mask).to(device) if memory is not None else None  # (B, n_nodes)
    state = model.init_state(enc, enc_mask)
    query = torch.arange(n_q, device=device)
    node = torch.zeros(n_q, dtype=torch.long, device=device)
    score = torch.zeros(n_q, dtype=torch.float32, device=device)
    prev = torch.full((n_q,), model.start_id, dtype=torch.long, device=device)
    fin = _Finished([], [], [])
    seen = _Finished([], [], [])  # fill: every scored edge (query, child, score / L**α)
    step = 0
    vocab = int(getattr(model, "vocab_size", 0) or 0)
    while len(node):
        step += 1
        row, ids, child = trie.expand(node)  # (E,) each: every allowed edge of every live row
        if hasattr(scorer, "expand"):  # group mode: one edge per CE row of each allowed token
            row, ids, child = scorer.expand(row, ids, child)
        if normalizer is not None and _sparse_pays(len(ids), len(node), vocab, scorer.width):
            logits, edge, state = _sparse_step(model, prev, state, normalizer, scorer, row, ids)
        else:
            logits, lse, state = _step(model, prev, state)
            edge = scorer.edge_scores(logits, lse, row, ids)
        cand = score[row] + torch.nan_to_num(edge, nan=float("-inf"))
        final = cand / (step**length_penalty) if length_penalty else cand
        rank = cand  # hypotheses of one step have one length: the raw sum ranks them
        if fill:
            seen.query.append(query[row])
            seen.node.append(child)
            seen.score.append(final)
        if look is not None:  # the memory's lookahead: length-normalised score + the best reachable memory
            rank = final = final + look[query[row], child]
        term = trie.is_terminal[child]
        fin.query.append(query[row[term]])
        fin.node.append(child[term])
        fin.score.append(final[term])
        extendable = trie.indptr[child + 1] > trie.indptr[child]
        keep = _select_live(query, row, rank, extendable, len(node), beam)
        if len(keep) and not length_penalty and not getattr(scorer, "duplicates", False):
            # scores only fall from here (so does the memory's max below a node): drop what cannot
            # reach the top-k (not in group mode, where several finished hypotheses may be one
            # document and would overstate the k-th best)
            kth = _kth_best(torch.cat(fin.query), torch.cat(fin.score), n_q, k)
            keep = keep[~(kth[query[row[keep]]] >= rank[keep])]  # NaN (fewer than k finished) keeps all
        if len(keep) == 0:
            break
        src = row[keep]
        prev = scorer.next_inputs(logits, src, ids[keep])
        new_query = query[src]
        same = len(src) == len(query) and bool(torch.equal(new_query, query))  # rows stay grouped by query
        query, node, score = new_query, child[keep], cand[keep]
        state = model.reorder_state(state, src, same_sources=same)
    out = _collect(fin, n_q, k)
    return _fill(trie, seen, out, look, k) if fill else out


_FILL_CELLS = 1 << 24  # (queries x trie nodes) floats one fill chunk holds: 64 MiB


def _fill(
    trie: TorchTrie, seen: _Finished, out: list[list[tuple[int, float]]], look: torch.Tensor | None, k: int
) -> list[list[tuple[int, float]]]:
    """Complete each query's ``out`` (finished (node, score), best first) to ``k`` terminals.

    The rule: a document the beam did not finish ranks by the score of the longest prefix of its
    identifier that the search scored (every first id is scored at step 1, so each document
    has one; a pruned prefix counts too): ``sum / L**α`` of that prefix, plus the memory's
    ``weight * m(doc)`` when a memory is on. Ties keep trie order (smaller node first). The
    scores are shifted down, when needed, to lie below the query's last finished one, so the
    finished documents keep their places and scores. Cost: per query one pass over the trie's
    levels (no decoder call), in chunks of at most ``_FILL_CELLS`` query x node cells.
    """
    need = [i for i, hyps in enumerate(out) if len(hyps) < k]
    if not need or not seen.query:
        return out
    device = trie.indptr.device
    n_nodes = int(trie.indptr.shape[0]) - 1
    parent, levels = trie.levels()
    term = torch.nonzero(trie.is_terminal).squeeze(1)  # (T,) ascending
    sq, sn, ss = torch.cat(seen.query), torch.cat(seen.node), torch.cat(seen.score).float()
    # a -inf edge is the lowest finite float in ``cand`` (nan_to_num): unreachable, as NaN
    ss = torch.where(torch.isnan(ss) | (ss <= torch.finfo(ss.dtype).min), float("-inf"), ss)
    n_q = len(out)
    per_chunk = max(1, _FILL_CELLS // max(n_nodes, 1))
    for lo in range(0, len(need), per_chunk):
        chunk = torch.tensor(need[lo : lo + per_chunk], device=device)
        pos = torch.full((n_q,), -1, dtype=torch.long, device=device)
        pos[chunk] = torch.arange(len(chunk), device=device)
        mine = pos[sq] >= 0
        best = torch.full((len(chunk), n_nodes), float("nan"), device=device)  # (C, n_nodes): NaN unscored
        flat = pos[sq[mine]] * n_nodes + sn[mine]
        best.view(-1).scatter_reduce_(0, flat, ss[mine], reduce="amax", include_self=False)
        for a, b in levels[1:]:  # top-down: an unscored node takes its parent's (deepest scored prefix)
            if b > a:
                cur = best[:, a:b]
                best[:, a:b] = torch.where(torch.isnan(cur), best[:, parent[a:b]], cur)
        key = best[:, term]  # (C, T)
        if look is not None:
            key = key + look[chunk][:, term]
        key = torch.where(torch.isnan(key), float("-inf"), key)
        for r, qi in enumerate(need[lo : lo + per_chunk]):
            done = out[qi]
            want = min(k - len(done), len(term) - len(done))
            # the finished terminals are among these at most len(done) times: skip them
            order = torch.sort(key[r], descending=True, stable=True).indices[: want + len(done)]
            taken = {n for n, _ in done}
            extra = [(int(term[i]), float(key[r, i])) for i in order.tolist() if int(term[i]) not in taken][:want]
            if extra and done and math.isfinite(done[-1][1]):
                shift = min(0.0, done[-1][1] - extra[0][1] - 1e-3)  # strictly below the last finished
                extra = [(n, s + shift) for n, s in extra]
            out[qi] = done + extra
    return out


def _collect(fin: _Finished, n_q: int, k: int) -> list[list[tuple[int, float]]]:
    """Per query: finished (node, score), best first (ties: smaller node), at most ``k`` of them."""
    if not fin.query:
        return [[] for _ in range(n_q)]
    q = torch.cat(fin.query).cpu().numpy()
    n = torch.cat(fin.node).cpu().numpy()
    s = torch.cat(fin.score).float().cpu().numpy()
    out: list[list[tuple[int, float]]] = [[] for _ in range(n_q)]
    seen: set[tuple[int, int]] = set()
    for i in np.lexsort((n, -np.nan_to_num(s, nan=-np.inf), q)):
        if len(out[q[i]]) < k and (q[i], n[i]) not in seen:  # a node reached twice keeps its best
            seen.add((q[i], n[i]))
            out[q[i]].append((int(n[i]), float(s[i])))
    return out


_ROWS_PER_STEP = 320  # decoder rows aimed at per step: below ~100 the h · CEᵀ product runs far under peak,
# above ~400 its blocks fall out of cache (measured: 1.03x the FLOP floor at 320, 1.14x at 510)
_LOGITS_BUDGET = 1 << 30  # bytes of fp32 logits (rows x V_out) that one step may hold


def auto_batch_size(beam: int, vocab_size: int, *, max_queries: int = 64) -> int:
    """Queries per batch: enough that a step has ~320 rows (``beam`` per query), few enough that
    the step's fp32 logits stay under 1 GiB.

    Rows per step, not queries, set the speed: the CE product streams the whole table once per
    step, so at 8 rows it is bound by memory bandwidth (measured ~10 GFLOP/s here, against ~55
    at 80+ rows). Larger batches also dilute the thin last steps of a batch.
    """
    by_rows = _ROWS_PER_STEP // max(beam, 1)
    by_memory = _LOGITS_BUDGET // (4 * max(beam, 1) * max(vocab_size, 1))
    return int(max(1, min(by_rows, by_memory, max_queries)))


def search(
    model: Any,
    trie: Trie,
    queries: list[str],
    *,
    k: int = 10,
    beam: int = 10,
    batch_size: int | None = None,
    length_penalty: float = 0.0,
    max_query_length: int = 64,
    past_beam: str = "prefix",
    dtype: str | None = None,
    progress: bool | None = None,
    normalizer: Any = None,
    group: bool = False,
    memory: Any = None,
) -> list[list[tuple[int, float]]]:
    """Top-``k`` ``(value, score)`` per query (values = the trie's document group ids), best first.

    A terminal shared by several values (documents with one identifier) yields all of them with
    the same score. ``batch_size`` queries are decoded together (None: :func:`auto_batch_size`
    for the beam and the output vocabulary). ``past_beam`` says how a query that finished fewer
    than ``k`` documents gets the rest: ``"prefix"`` ranks them by the scores the search already
    computed (:func:`_fill`; no more decoding), ``"widen"`` searches it again with a doubled beam
    (up to exhaustive: exact, and up to ~50x slower at k = 1,000), ``"none"`` returns what the
    beam finished. The first documents are the same in all three.
    ``progress``: a bar (queries done / total, q/s) on stderr once a search runs for more than a
    few seconds (None: when stderr is a terminal).
    ``dtype`` ("fp32" | "bf16" | "auto"; None keeps the model as it is) casts the model, CE
    table included, in place first (see :func:`cast_for_decoding`); scores stay fp32.
    ``normalizer``: None (exact scores) or an :class:`~npdecode.normalizer.IvfNormalizer` built
    on the model's CE table (approximate normalizer, Np models only).
    ``group``: the authors' group mode over a token trie (any CE row of an allowed token; a
    document scores the best of the row sequences that spell it).
    ``memory``: a :class:`~npdecode.memory.CEMemory` over ``trie`` (its lookahead joins the scores).
    """
    if k < 1 or beam < 1 or (batch_size is not None and batch_size < 1):
        raise NpdecodeError(f"k={k}, beam={beam}, batch_size={batch_size}: all must be at least 1")
    if past_beam not in PAST_BEAM:
        raise NpdecodeError(f"past_beam {past_beam!r}: use one of {', '.join(PAST_BEAM)}")
    if normalizer is not None and not hasattr(model, "step_scaled_hidden"):
        raise NpdecodeError("an approximate normalizer needs an Np model (the vanilla model's vocabulary is small)")
    if dtype is not None:
        model = cast_for_decoding(model, dtype)
    ttrie = trie.to_torch(model.device)
    scorer = make_scorer(model, trie, group=group)
    want = min(k, trie.n_sequences)
    results: list[list[tuple[int, float]]] = [[] for _ in queries]
    todo, width = list(range(len(queries))), beam
    fill = past_beam == "prefix"
    while todo:
        per_batch = batch_size or auto_batch_size(width, int(getattr(model, "vocab_size", 0) or 32768))
        bar = _progress(len(todo), "search" if width == beam else f"widen to beam {width}", progress)
        for lo in range(0, len(todo), per_batch):
            idx = todo[lo : lo + per_batch]
            ids, mask = model.tokenize([queries[i] for i in idx], max_query_length)
            hyps = beam_search(
                model,
                ttrie,
                ids,
                mask,
                k=k,
                beam=width,
                length_penalty=length_penalty,
                scorer=scorer,
                normalizer=normalizer,
                memory=memory,
                fill=fill,
            )
            for i, h in zip(idx, hyps):
                results[i] = _to_values(trie, h, k)
            bar.update(len(idx))
        bar.close()
        if past_beam != "widen" or width >= trie.n_sequences:
            break
        width = min(max(2 * width, k), trie.n_sequences)
        todo = [i for i in todo if len(results[i]) < want]
    return results


PAST_BEAM = ("prefix", "widen", "none")


def _progress(total: int, desc: str, enabled: bool | None) -> Any:
    """A tqdm bar over queries that appears only after 3 s (short searches print nothing)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="q", delay=3, disable=None if enabled is None else not enabled)


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def bf16_supported(device: Any) -> bool:
    """Whether bf16 matmuls run natively (CUDA with bf16, or a CPU with AVX512-BF16/AMX via oneDNN).

    Elsewhere (e.g. AVX2-only CPUs) torch emulates bf16 matmuls at a small fraction of the fp32 rate.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def resolve_dtype(name: str, device: Any) -> torch.dtype:
    """``"fp32"``/``"bf16"`` as asked; ``"auto"``: bf16 where :func:`bf16_supported`, else fp32."""
    if name == "auto":
        return torch.bfloat16 if bf16_supported(device) else torch.float32
    if name not in DTYPES:
        raise NpdecodeError(f"dtype {name!r} is not one of fp32, bf16, auto")
    return DTYPES[name]


def cast_for_decoding(model: Any, name: str) -> Any:
    """Cast the model (backbone and CE table) to the decoding dtype in place; returns it.

    Models without ``.to`` (test doubles) are returned unchanged.
    """
    dtype = resolve_dtype(name, getattr(model, "device", "cpu"))
    net = getattr(getattr(model, "backbone", None), "model", None)
    if hasattr(model, "to") and net is not None and net.dtype != dtype:
        scale = model.log_scale.data.float().clone() if hasattr(model, "log_scale") else None
        model.to(dtype)  # casting back from bf16 does not restore the fp32 weights: keep a copy if needed
        if scale is not None:  # the temperature is a scalar: keep it exact in fp32
            model.log_scale.data = scale
    return model


def _to_values(trie: Trie, hyps: list[tuple[int, float]], k: int) -> list[tuple[int, float]]:
    out: list[tuple[int, float]] = []
    for node, score in hyps:
        for v in trie.values(node):
            out.append((int(v), score))
            if len(out) == k:
                return out
    return out
