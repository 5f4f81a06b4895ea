"""The Np model (decoder vocabulary = CE table) and the vanilla model, behind one decoder interface.

Both wrap a :class:`~npdecode.backbone.Backbone` and expose what the constrained decoder needs:

- ``encode(input_ids, attention_mask) -> (enc (B, T, d), mask (B, T))``
- ``init_state(enc, mask) -> DecoderState``; ``start_id``; ``eos_id``
- ``step(prev_ids (N,), state) -> (logits (N, V_out) float, state)`` with a KV cache
- ``reorder_state(state, rows (M,), same_sources=False) -> state`` (rows index the N current rows;
  M may differ; ``same_sources``: row i keeps its query, only the self-attention cache moves)
- ``forward(input_ids, attention_mask, decoder_input_ids) -> logits (B, L, V_out)`` (teacher forcing)

Output ids are CE row ids for :class:`NpModel` and token ids for :class:`VanillaModel`.
"""

from __future__ import annotations

import functools
import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from npdecode import cross_attention
from npdecode.backbone import Backbone, load_backbone
from npdecode.errors import NpdecodeError

NPDECODE_JSON = "npdecode.json"
CE_FILE = "npdecode_ce.safetensors"
FORMAT_VERSION = 1
_LOG2E = 1.4426950408889634  # log2(e)


def _lse_chunk(n_rows: int) -> int:
    """CE rows per block of the fused logits + normalizer: a block of ~128k fp32 (512 KiB) stays
    in L2 while its max and sum-exp are taken (measured best between 256 and 2048 rows)."""
    return max(256, min(8192, (1 << 17) // max(n_rows, 1)))


@dataclass
class DecoderState:
    """Per-row decoding state: encoder states, their mask and the KV cache.

    Plain: ``enc`` (N, T, d) and ``enc_mask`` (N, T), one row per decoder row. Grouped
    (``rows_query`` set, see :mod:`npdecode.cross_attention`): ``enc``/``enc_mask`` and the
    cross-attention cache hold one row per *query* (B), and ``rows_query`` (N,) says which query
    each decoder row belongs to.
    """

    enc: torch.Tensor
    enc_mask: torch.Tensor
    cache: Any = None
    rows_query: torch.Tensor | None = None


class _Seq2Seq(nn.Module):
    """Decoder plumbing shared by the Np and vanilla models; subclasses define embed/logits."""

    def __init__(self, backbone: Backbone):
        super().__init__()
        self.backbone = backbone
        self.net = backbone.model  # registered so .to()/.parameters()/state_dict() see it

    start_id: int
    eos_id: int

    @property
    def device(self) -> torch.device:
        return self.backbone.device

    def embed(self, ids: torch.Tensor) -> torch.Tensor:  # (N, L) -> (N, L, d)
        raise NotImplementedError

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:  # (..., d) -> (..., V_out)
        raise NotImplementedError

    def tokenize(self, texts: list[str], max_length: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded encoder inputs ``(B, T)`` for query strings, on the model's device (cut to
        ``max_length`` tokens, and to the positions the backbone has)."""
        enc = self.backbone.tokenizer(
            texts, padding=True, truncation=True, max_length=self.backbone.fit_length(max_length), return_tensors="pt"
        )
        return enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.backbone.encode(input_ids, attention_mask), attention_mask

    def init_state(self, enc: torch.Tensor, enc_mask: torch.Tensor) -> DecoderState:
        """The state before the first step: one decoder row per query; grouped cross-attention
        when the decoder supports it (``grouped_cross_attention`` not False)."""
        rows_query = None
        if self._grouping() is not None:
            rows_query = torch.arange(enc.shape[0], device=enc.device)
        return DecoderState(enc, enc_mask, None, rows_query)

    grouped_cross_attention: bool | None = None  # None: try on the first step; False: never; True: verified

    def _grouping(self) -> frozenset[int] | None:
        """ids of the decoder's cross-attention modules when grouped decoding is on, else None."""
        if self.grouped_cross_attention is False:
            return None
        found = self.__dict__.get("_cross_modules")  # plain attributes: not submodules, not in state_dict
        if found is None:
            decoder = self.backbone.decoder
            found = (
                tuple(cross_attention.cross_attention_modules(decoder)) if cross_attention.supported(decoder) else ()
            )
            self.__dict__["_cross_modules"] = found
            self.__dict__["_decoder_configs"] = _decoder_configs(decoder)
        return frozenset(id(m) for m in found) or None

    def _decode(self, embeds: torch.Tensor, enc, enc_mask, dec_mask=None, cache=None):
        decoder = self.backbone.decoder
        name = _cache_argument(type(decoder))
        out = decoder(
            inputs_embeds=embeds,
            attention_mask=dec_mask,
            encoder_hidden_states=enc,
            encoder_attention_mask=enc_mask,
            use_cache=cache is not None,
            **{name: cache},
        )
        return out.last_hidden_state, out.get(name)

    def step(self, prev_ids: torch.Tensor, state: DecoderState) -> tuple[torch.Tensor, DecoderState]:
        """One cached decoder step: ``prev_ids`` (N,) output ids -> logits (N, V_out)."""
        hidden, state = self._step_hidden(prev_ids, state)
        return self.logits(hidden), state

    def _step_hidden(self, prev_ids: torch.Tensor, state: DecoderState) -> tuple[torch.Tensor, DecoderState]:
        """The decoder part of :meth:`step`: last decoder states (N, d) and the grown cache."""
        from transformers import DynamicCache, EncoderDecoderCache

        cache = state.cache
        first = cache is None
        if first:
            cfg = self.backbone.decoder.config
            cache = EncoderDecoderCache(DynamicCache(config=cfg), DynamicCache(config=cfg))
        embeds = self.embed(prev_ids[:, None])
        cross = self._grouping() if state.rows_query is not None else None
        if cross is None:
            hidden, cache = self._decode(embeds, state.enc, state.enc_mask, cache=cache)
            return hidden[:, -1], DecoderState(state.enc, state.enc_mask, cache)
        groups = cross_attention.groups_for(state.rows_query, state.enc.shape[0], cross)
        with cross_attention.grouped(self.__dict__["_decoder_configs"], groups):
            hidden, cache = self._decode(embeds, state.enc, state.enc_mask, cache=cache)
        if groups.calls != len(cross):
            # the decoder's attention does not dispatch through the registry. On the first step
            # (one row per query, in order) the result is right either way: go on ungrouped.
            if not first:
                raise NpdecodeError("grouped cross-attention was bypassed after the first step (internal error)")
            self.grouped_cross_attention = False
            return hidden[:, -1], DecoderState(state.enc, state.enc_mask, cache)
        self.grouped_cross_attention = True
        return hidden[:, -1], DecoderState(state.enc, state.enc_mask, cache, state.rows_query)

    def reorder_state(self, state: DecoderState, rows: torch.Tensor, *, same_sources: bool = False) -> DecoderState:
        """Keep/duplicate rows (``rows`` indexes the current N rows) of the state and its cache.

        ``same_sources``: the caller knows that new row i belongs to the same query as old row i
        (beam search in steady state: every query keeps its number of rows). The encoder states
        and the cross-attention cache depend on the query only, so they stay as they are and
        only the self-attention cache is gathered (at ~300 rows this was ~20% of a step).
        """
        if state.rows_query is not None:
            return self._reorder_grouped(state, rows)
        cache = state.cache
        self_cache = getattr(cache, "self_attention_cache", None)
        if same_sources and self_cache is not None:
            self_cache.reorder_cache(rows)
            return state
        if cache is not None:
            cache.reorder_cache(rows)
        return DecoderState(state.enc.index_select(0, rows), state.enc_mask.index_select(0, rows), cache)

    def _reorder_grouped(self, state: DecoderState, rows: torch.Tensor) -> DecoderState:
        """Grouped state: the self-attention cache follows ``rows``; encoder states and the
        cross-attention cache stay per query, compacted once at most half the queries are left."""
        cache = state.cache
        rows_query = state.rows_query[rows]
        if cache is None:
            return DecoderState(state.enc, state.enc_mask, None, rows_query)
        cache.self_attention_cache.reorder_cache(rows)
        present, new_index = torch.unique(rows_query, return_inverse=True)
        if 2 * len(present) > state.enc.shape[0]:
            return DecoderState(state.enc, state.enc_mask, cache, rows_query)
        cache.cross_attention_cache.reorder_cache(present)
        return DecoderState(
            state.enc.index_select(0, present), state.enc_mask.index_select(0, present), cache, new_index
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        decoder_input_ids: torch.Tensor,
        decoder_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Teacher-forced logits ``(B, L, V_out)`` for output-id inputs ``decoder_input_ids`` (B, L)."""
        enc, mask = self.encode(input_ids, attention_mask)
        hidden, _ = self._decode(self.embed(decoder_input_ids), enc, mask, dec_mask=decoder_attention_mask)
        return self.logits(hidden)


class NpModel(_Seq2Seq):
    """Np Decoding: decoder input embeddings and output projection are the CE table.

    ``logits = output_scale * logit_scale * h · CEᵀ`` with ``output_scale`` the backbone's
    (``d_model**-0.5`` for tied T5) and ``logit_scale`` a fixed or learned temperature.
    ``ce`` (V_ce, d) is frozen unless ``trainable_ce``; ``ce_token_ids`` (V_ce,) maps rows to
    token ids; ``start_ce_id``/``eos_ce_id`` are the rows of the decoder start and EOS tokens.

    ``token_embeddings``: the table the decoder reads and scores is ``CE[r] + E[token(r)]`` with
    ``E`` a trainable embedding per *token* of the tokenizer (zeros at first: the model starts as
    plain Np). The CE rows stay frozen and nonparametric; what training learns about a token
    reaches every row of it, also rows appended after training.
    """

    def __init__(
        self,
        backbone: Backbone,
        ce: torch.Tensor,
        ce_token_ids: torch.Tensor,
        *,
        start_ce_id: int = 0,
        eos_ce_id: int = 1,
        logit_scale: float = 1.0,
        learn_scale: bool = False,
        trainable_ce: bool = False,
        token_embeddings: bool = False,
        memory_weight: float = 0.0,
    ):
        super().__init__(backbone)
        if ce.ndim != 2 or ce.shape[1] != backbone.d_model:
            raise NpdecodeError(f"CE table has shape {tuple(ce.shape)}; expected (V_ce, {backbone.d_model})")
        if ce_token_ids.shape != (ce.shape[0],):
            raise NpdecodeError(f"ce_token_ids has shape {tuple(ce_token_ids.shape)}; expected ({ce.shape[0]},)")
        for name, row in (("start_ce_id", start_ce_id), ("eos_ce_id", eos_ce_id)):
            if not 0 <= row < ce.shape[0]:
                raise NpdecodeError(f"{name}={row} is outside the CE table (0..{ce.shape[0] - 1})")
        dtype, device = backbone.model.dtype, backbone.device
        self.ce = nn.Parameter(ce.detach().to(device=device, dtype=dtype).clone(), requires_grad=trainable_ce)
        self.register_buffer("ce_token_ids", ce_token_ids.detach().to(device=device, dtype=torch.long).clone())
        self.log_scale = nn.Parameter(torch.tensor(float(logit_scale), device=device).log(), requires_grad=learn_scale)
        self.start_id, self.eos_id = int(start_ce_id), int(eos_ce_id)
        self.output_scale = backbone.output_scale
        # decoding default of the CE memory's lookahead (npdecode/memory.py): not a weight, a setting
        # the checkpoint carries so that `npdecode search` decodes as the run was meant to
        self.memory_weight = float(memory_weight)
        self.token_emb = None
        if token_embeddings:
            n_tokens = max(len(backbone.tokenizer), int(self.ce_token_ids.max()) + 1)
            self.token_emb = nn.Parameter(torch.zeros(n_tokens, ce.shape[1], device=device, dtype=dtype))

    def with_table(self, ce: torch.Tensor, ce_token_ids: torch.Tensor, start_ce_id: int, eos_ce_id: int) -> NpModel:
        """This model (backbone and token embeddings shared, logit scale copied) over another CE
        table, frozen: another corpus's index, or this table with rows appended to the index."""
        other = NpModel(
            self.backbone,
            ce,
            ce_token_ids,
            start_ce_id=start_ce_id,
            eos_ce_id=eos_ce_id,
            memory_weight=self.memory_weight,
        )
        with torch.no_grad():
            other.log_scale.copy_(self.log_scale)
        if self.token_emb is not None:
            if int(other.ce_token_ids.max()) >= len(self.token_emb):
                raise NpdecodeError(
                    f"the CE table has token id {int(other.ce_token_ids.max())}; the model's token embeddings "
                    f"cover {len(self.token_emb)} tokens (another tokenizer?)"
                )
            other.token_emb = self.token_emb
        return other

    def table(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """The rows the decoder reads and scores, (V_ce, d) or those of ``rows``: CE, plus the
        rows' token embeddings where the model has them."""
        ce = self.ce if rows is None else self.ce.index_select(0, rows)
        if self.token_emb is None:
            return ce
        tokens = self.ce_token_ids if rows is None else self.ce_token_ids.index_select(0, rows)
        return ce + self.token_emb.index_select(0, tokens)

    # the decoder fuses the normalizer into the CE product (False: plain ``step`` + logsumexp)
    fused_normalizer: bool = True

    @property
    def vocab_size(self) -> int:
        return self.ce.shape[0]

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        if self.token_emb is None:
            return nn.functional.embedding(ids, self.ce)
        return nn.functional.embedding(ids, self.ce) + nn.functional.embedding(self.ce_token_ids[ids], self.token_emb)

    def logits(self, hidden: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """``(..., d) -> (..., V_ce)``, or over the CE rows ``rows`` only (a sampled softmax)."""
        # scale the (N, d) states, not the (N, V_ce) product: one pass over the big matrix less
        scale = (self.log_scale.exp() * self.output_scale).to(hidden.dtype)
        return _ce_logits(hidden * scale, self.table(rows))

    def step_scaled_hidden(self, prev_ids: torch.Tensor, state: DecoderState) -> tuple[torch.Tensor, DecoderState]:
        """The decoder part of a step with the output scale applied: ``logits = h · CEᵀ`` for the
        returned ``h`` (N, d). The sparse (approximate-normalizer) decoding path starts here."""
        hidden, state = self._step_hidden(prev_ids, state)
        return hidden * (self.log_scale.exp() * self.output_scale).to(hidden.dtype), state

    def _step_normalized(
        self, prev_ids: torch.Tensor, state: DecoderState
    ) -> tuple[torch.Tensor, torch.Tensor, DecoderState]:
        """:meth:`step` for the decoder: fp32 logits (N, V_ce) (maybe a strided view), their
        ``logsumexp`` (N,) and the state.

        On CPU the ``h · CEᵀ`` product is computed in CE-row chunks whose max and sum-exp are
        taken while the chunk is still in cache: the normalizer then costs no extra pass over
        the (N, V_ce) matrix, which at ~10⁵ rows is as slow as the matmul itself.
        """
        hidden, state = self._step_hidden(prev_ids, state)
        scale = (self.log_scale.exp() * self.output_scale).to(hidden.dtype)
        table = self.table()
        if hidden.device.type != "cpu":
            logits = _ce_logits(hidden * scale, table).float()
            return logits, torch.logsumexp(logits, dim=-1), state
        h_t = (hidden * scale).T.contiguous()  # (d, N)
        n = h_t.shape[1]
        out = torch.empty(table.shape[0], n, dtype=torch.float32, device=h_t.device)  # (V, N)
        chunk = _lse_chunk(n)
        shifted = torch.empty(chunk, n, dtype=torch.float32)  # reused: no allocation per block
        maxes, sums = [], []
        for lo in range(0, table.shape[0], chunk):
            block = out[lo : lo + chunk]
            if table.dtype == torch.float32:
                torch.mm(table[lo : lo + chunk], h_t, out=block)
            else:  # bf16 product (fp32 accumulation inside the kernel), stored and normalized in fp32
                block.copy_(table[lo : lo + chunk] @ h_t)
            m = block.amax(0)
            m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))  # all -inf block: exp -> 0, not NaN
            maxes.append(m)
            # exp(x) as exp2(x·log2 e): torch's exp takes a slow path for very negative inputs (wide
            # logit ranges, the common case here) and ran the whole step ~1.6x slower than exp2
            t = torch.sub(block, m, out=shifted[: len(block)])
            sums.append(t.mul_(_LOG2E).exp2_().sum(0))
        m_all, s_all = torch.stack(maxes), torch.stack(sums)  # (chunks, N)
        top = m_all.amax(0)
        return out.T, top + (s_all * (m_all - top).exp()).sum(0).log(), state

    def config_dict(self) -> dict:
        return {
            "kind": "np",
            "format_version": FORMAT_VERSION,
            "start_ce_id": self.start_id,
            "eos_ce_id": self.eos_id,
            "learn_scale": self.log_scale.requires_grad,
            "trainable_ce": self.ce.requires_grad,
            "token_embeddings": self.token_emb is not None,
            "memory_weight": self.memory_weight,
            "ce_rows": self.vocab_size,
            "family": self.backbone.family,
        }


def _decoder_configs(decoder: Any) -> list[Any]:
    """The config objects the decoder's attention and mask code read (usually one)."""
    configs = {id(decoder.config): decoder.config}
    for module in decoder.modules():
        cfg = getattr(module, "config", None)
        if cfg is not None and hasattr(cfg, "_attn_implementation"):
            configs.setdefault(id(cfg), cfg)
    return list(configs.values())


@functools.cache
def _cache_argument(decoder_class: type) -> str:
    """The decoder's KV-cache argument (and output field): ``cache`` from transformers ~5.2x on,
    ``past_key_values`` before. A wrong name is swallowed by ``**kwargs`` and silently decodes
    every step without the cache (seen with 5.17: scores off by tens of nats)."""
    params = inspect.signature(decoder_class.forward).parameters
    for name in ("cache", "past_key_values"):
        if name in params:
            return name
    raise NpdecodeError(
        f"{decoder_class.__name__}.forward takes neither `cache` nor `past_key_values`; this transformers "
        "version is not supported (install transformers>=5,<6)"
    )


def _ce_logits(hidden: torch.Tensor, ce: torch.Tensor) -> torch.Tensor:
    """``hidden · ceᵀ`` (..., V_ce); bf16/fp16 on CUDA comes out in fp32 (fp32 accumulation kept)."""
    if hidden.dtype != torch.float32 and hidden.is_cuda and hidden.ndim == 2 and not torch.is_grad_enabled():
        try:
            return torch.mm(hidden, ce.T, out_dtype=torch.float32)
        except (TypeError, RuntimeError):  # torch without the out_dtype overload
            pass
    return hidden @ ce.T


class VanillaModel(_Seq2Seq):
    """GENRE-style model: the backbone's own vocabulary in and out (the baseline)."""

    def __init__(self, backbone: Backbone):
        super().__init__(backbone)
        self.start_id, self.eos_id = backbone.decoder_start_token_id, backbone.eos_token_id

    @property
    def vocab_size(self) -> int:
        return self.backbone.output_weight().shape[0]

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.backbone.input_embeddings()(ids)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.backbone.vanilla_logits(hidden)

    def config_dict(self) -> dict:
        return {"kind": "vanilla", "format_version": FORMAT_VERSION, "family": self.backbone.family}


def save_model(model: NpModel | VanillaModel, out_dir: str | Path) -> Path:
    """Write an HF checkpoint dir (weights, config, tokenizer) plus ``npdecode.json`` (and the CE
    table), and ``checksums.json`` over all of them (:mod:`npdecode.integrity`)."""
    from safetensors.torch import save_file

    from npdecode.atomic import atomic_dir
    from npdecode.integrity import write_checksums

    out_dir = Path(out_dir)
    with atomic_dir(out_dir, overwrite=True) as tmp:
        model.backbone.model.save_pretrained(tmp)
        model.backbone.tokenizer.save_pretrained(tmp)
        if isinstance(model, NpModel):
            tensors = {
                "ce": model.ce.detach(),
                "ce_token_ids": model.ce_token_ids,
                "log_scale": model.log_scale.detach(),
            }
            if model.token_emb is not None:
                tensors["token_emb"] = model.token_emb.detach()
            save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, str(tmp / CE_FILE))
        (tmp / NPDECODE_JSON).write_text(json.dumps(model.config_dict(), indent=2))
        write_checksums(tmp)  # last: it covers every file above
    return out_dir


def load_model(
    path: str | Path, *, device: Any = None, trust_remote_code: bool = False, verify: bool = False
) -> NpModel | VanillaModel:
    """Load what :func:`save_model` wrote (a dir without ``npdecode.json`` loads as vanilla).

    Its files are checked against its ``checksums.json`` first (sizes; with ``verify`` also
    digests); a missing, truncated, corrupted or unreadable file is one NpdecodeError line.
    """
    from safetensors.torch import load_file

    from npdecode.integrity import checkpoint_remedy, ensure_intact, read_checksums, reading

    path = Path(path)
    remedy = checkpoint_remedy(path)
    if path.is_dir():
        ensure_intact(path, read_checksums(path), digests=verify, remedy=remedy)
    meta_file = path / NPDECODE_JSON
    with reading(meta_file, remedy):
        meta = json.loads(meta_file.read_text(encoding="utf-8")) if meta_file.is_file() else {"kind": "vanilla"}
    backbone = load_backbone(path, trust_remote_code=trust_remote_code, device=device, checked=True)
    if meta.get("kind") == "vanilla":
        return VanillaModel(backbone)
    if meta.get("kind") != "np":
        raise NpdecodeError(f"{meta_file}: unknown kind {meta.get('kind')!r}; expected 'np' or 'vanilla'")
    if not (path / CE_FILE).is_file():
        raise NpdecodeError(f"{path / CE_FILE} is missing; the Np checkpoint is incomplete, save it again")
    with reading(path / CE_FILE, remedy):
        t = load_file(str(path / CE_FILE))
    model = NpModel(
        backbone,
        t["ce"],
        t["ce_token_ids"],
        start_ce_id=meta["start_ce_id"],
        eos_ce_id=meta["eos_ce_id"],
        learn_scale=meta.get("learn_scale", False),
        trainable_ce=meta.get("trainable_ce", False),
        token_embeddings=meta.get("token_embeddings", False),
        memory_weight=meta.get("memory_weight", 0.0),
    )
    with torch.no_grad():
        model.log_scale.copy_(t["log_scale"])
        if model.token_emb is not None:
            if "token_emb" not in t:
                raise NpdecodeError(f"{path / CE_FILE} lacks token_emb (npdecode.json says it has one); save it again")
            model.token_emb.copy_(t["token_emb"])
    return model
