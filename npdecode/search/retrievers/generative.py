"""Generative retrievers (``np``, ``genre``) over an index dir, for ``npdecode search`` and ``eval``.

``np``: the Np model (decoder vocabulary = the index's CE table) with the index's CE-id trie
(or its token-id trie, scores log-sum-exp over a token's CE rows). ``genre``: the vanilla model
(the backbone's own vocabulary) with the index's token-id trie, the GENRE-style baseline.
The model defaults to the one the index was built with (``manifest.json``); pass ``model`` to
decode with another checkpoint (a trained Np checkpoint keeps its own CE rows and takes the
rows appended to the index since).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from npdecode.errors import NpdecodeError
from npdecode.index.layout import Index, load_index
from npdecode.runs import Run
from npdecode.search.options import SearchOptions
from npdecode.search.registry import register_retriever

log = logging.getLogger(__name__)
UNREACHABLE = -1e30  # stands for a -inf score in runs (TREC files need finite numbers)
# the log line of a search whose k exceeds the beam: how documents past the beam were ranked
PAST_BEAM_RULES = {
    "prefix": "documents past the beam of {beam} ranked by the score of their longest identifier prefix the "
    "search scored, below the finished ones (past_beam=prefix; 'widen' decodes them, far slower)",
    "widen": "documents past the beam of {beam} found by decoding again with doubled beams up to {k} (past_beam=widen)",
    "none": "only the documents the beam of {beam} finished are returned, not k={k} (past_beam=none)",
}


class GenerativeRetriever:
    """The generative retriever over an index dir: ``search(queries, k) -> run``.

    ``options`` (:class:`~npdecode.search.options.SearchOptions`, or its fields as keywords:
    ``beam``, ``trie_mode``, ``length_penalty``, ``normalizer``, ``past_beam``, ``batch_size``,
    ``device``, and ``gr_model`` (or ``model``) for another checkpoint) say how it decodes;
    ``verify`` checks the digests of the index's and the checkpoint's files at load.
    """

    def __init__(
        self,
        index_dir: str | Path,
        *,
        kind: str = "np",
        options: SearchOptions | None = None,
        model: str | Path | None = None,
        **overrides: Any,
    ) -> None:
        from npdecode.device import resolve_device
        from npdecode.trie import Trie

        if kind not in ("np", "genre"):
            raise NpdecodeError(f"retriever kind {kind!r}: use 'np' or 'genre'")
        opts = SearchOptions.of(options, **overrides, **({"gr_model": str(model)} if model is not None else {}))
        self.name, self.index, self.options = kind, load_index(index_dir, verify=opts.verify), opts
        mode = "token" if kind == "genre" else (opts.trie_mode or self.index.manifest.config["trie_mode"])
        if mode not in ("ce", "token", "group"):
            raise NpdecodeError(f"trie mode {mode!r}: use 'ce', 'token' or 'group'")
        self.group = mode == "group"  # the token trie; any CE row of an allowed token may be emitted
        self.trie = Trie.load(self.index.trie_path("token" if self.group else mode))
        ref = opts.gr_model if opts.gr_model is not None else decoding_model_ref(self.index)
        self.model = open_model(self.index, ref, kind, resolve_device(opts.device), verify=opts.verify)
        self.normalizer = _build_normalizer(opts.normalizer, self.model, kind, self.index.path)
        self.memory = _build_memory(self.index, self.trie, self.model, kind, opts.memory_weight)

    def search(self, queries: Mapping[str, str], k: int) -> Run:
        """Top ``k`` documents per query: identifier groups decoded best first, each group
        standing for all its documents (same score), cut to ``k`` documents."""
        from npdecode.decoding import search

        qids = list(queries)
        o = self.options
        hits = search(
            self.model,
            self.trie,
            [queries[q] for q in qids],
            k=k,
            beam=o.beam,
            batch_size=o.batch_size,
            length_penalty=o.length_penalty,
            normalizer=self.normalizer,
            past_beam=o.past_beam,
            group=self.group,
            dtype=o.dtype,
            memory=self.memory,
            progress=o.progress,
        )
        run: Run = {}
        for qid, ranked in zip(qids, hits):
            docs: dict[str, float] = {}
            for group, score in ranked:
                for doc_id in self.index.live_doc_ids(group):
                    if len(docs) < k and doc_id not in docs:
                        docs[doc_id] = max(UNREACHABLE, score)
            run[qid] = docs
        return run

    def past_beam_note(self, k: int) -> str | None:
        """One line saying how a search for ``k`` documents ranks those past the beam (None: k <= beam)."""
        o = self.options
        return PAST_BEAM_RULES[o.past_beam].format(beam=o.beam, k=k) if k > o.beam else None


def decoding_model_ref(index: Index) -> str:
    """The model an index decodes with by default: the trained checkpoint its manifest names
    (``model.checkpoint``, relative to the index dir, written by ``npdecode train``), else the
    model that made its CE."""
    checkpoint = index.manifest.model.checkpoint
    if checkpoint:
        path = (index.path / checkpoint).resolve()
        if not path.is_dir():
            raise NpdecodeError(f"{index.path}: its trained checkpoint {path} is missing; pass --model/--gr-model")
        return str(path)
    return index.manifest.model.ref


def open_model(index: Index, ref: str, kind: str, device: str, *, verify: bool = False):
    """The decoding model: Np over the index's CE table, or vanilla (``kind="genre"``).
    ``verify``: check the digests a local checkpoint records (sizes are always checked)."""
    import torch

    from npdecode.backbone import load_backbone
    from npdecode.model import NPDECODE_JSON, NpModel, VanillaModel, load_model

    trained = (Path(ref) / NPDECODE_JSON).is_file()
    if kind == "genre":
        model = (
            load_model(ref, device=device, verify=verify)
            if trained
            else VanillaModel(load_backbone(ref, device=device, verify=verify))
        )
        if isinstance(model, NpModel):
            model = VanillaModel(model.backbone)
        return model.eval()
    ce = torch.from_numpy(index.vectors)
    token_ids = torch.from_numpy(index.token_ids)
    start, eos = index.bos_ce, index.eos_ce
    if trained:
        loaded = load_model(ref, device=device, verify=verify)
        if isinstance(loaded, NpModel) and _built_from(index, ref) and not _same_rows(loaded, ce, token_ids):
            # an index made from this checkpoint's encoder (another corpus): its own table, the
            # checkpoint's weights and logit scale
            return loaded.with_table(ce, token_ids, start, eos).eval()
        if isinstance(loaded, NpModel):
            return _with_index_rows(loaded, ce, token_ids).eval()
        backbone = loaded.backbone
    else:
        backbone = load_backbone(ref, device=device, verify=verify)
    return NpModel(backbone, ce, token_ids, start_ce_id=start, eos_ce_id=eos).eval()


def _built_from(index: Index, ref: str) -> bool:
    """Whether the index's CE was extracted with the model at ``ref`` (its manifest names it)."""
    built = index.manifest.model.ref
    return built is not None and Path(built).exists() and Path(built).resolve() == Path(ref).resolve()


def _same_rows(model, ce, token_ids) -> bool:
    import torch

    have = model.vocab_size
    return (
        have <= len(ce)
        and torch.equal(model.ce_token_ids.cpu(), token_ids[:have])
        and torch.equal(model.ce.detach().float().cpu(), ce[:have])
    )


def _with_index_rows(model, ce, token_ids):
    """A trained Np model whose CE table is extended by rows appended to the index later."""
    import torch

    have = model.vocab_size
    if have > len(ce) or not torch.equal(model.ce_token_ids.cpu(), token_ids[:have]):
        raise NpdecodeError(
            f"the model's CE table ({have} rows) does not match this index ({len(ce)} rows); "
            "decode with the model the index was built for"
        )
    if have == len(ce):
        return model
    table = torch.cat([model.ce.detach().float().cpu(), ce[have:]])
    return model.with_table(table, token_ids, model.start_id, model.eos_id)


def _build_normalizer(spec: str, model: Any, kind: str, index_dir: Path) -> Any:
    """None for exact scores, else an :class:`~npdecode.normalizer.IvfNormalizer` over the CE
    table, its IVF structure saved in (and loaded from) the index dir."""
    from npdecode.normalizer import IvfNormalizer, parse_normalizer

    options = parse_normalizer(spec)
    if options is None:
        return None
    if kind != "np":
        raise NpdecodeError(f"--normalizer {spec}: only the np retriever has a CE table to approximate over")
    return IvfNormalizer(model.table().detach(), **options, cache_dir=index_dir)


def _build_memory(index: Index, trie: Any, model: Any, kind: str, weight: float | None) -> Any:
    """The CE memory's lookahead (:mod:`npdecode.memory`) when its weight is above 0: the
    option, else the checkpoint's ``memory_weight``; None for plain decoding."""
    if weight is None:
        weight = float(getattr(model, "memory_weight", 0.0) or 0.0)
    if weight == 0:
        return None
    if kind != "np":
        raise NpdecodeError(f"memory weight {weight}: only the np retriever decodes over a CE memory")
    from npdecode.memory import CEMemory, group_vectors

    vectors = group_vectors(index.vectors, [g.ce for g in index.groups])
    log.info("CE memory lookahead, weight %g, over %d identifier groups", weight, len(vectors))
    try:
        return CEMemory(trie, vectors, weight, device=model.device)
    except NpdecodeError as err:
        raise NpdecodeError(f"{index.path}: {err}") from None


def _factory(kind: str):
    def build(corpus_path: Path | None, options: SearchOptions) -> GenerativeRetriever:
        if options.index is None:
            raise NpdecodeError(f"--retriever {kind} needs --index INDEX_DIR (build one with `npdecode index`)")
        retriever = GenerativeRetriever(options.index, kind=kind, options=options)
        _warn_if_other_corpus(retriever.index, corpus_path)
        return retriever

    build.__name__ = f"build_{kind}_retriever"
    return build


build_np_retriever = _factory("np")
build_genre_retriever = _factory("genre")
register_retriever("np", build_np_retriever, builtin=True)
register_retriever("genre", build_genre_retriever, builtin=True)


def _warn_if_other_corpus(index: Index, corpus_path: Path | None) -> None:
    """Log when the dataset's corpus is not one the index was built from (ids may not match)."""
    if corpus_path is None:
        return
    from npdecode.corpus import corpus_digest

    try:
        digest = corpus_digest(corpus_path)
    except NpdecodeError:
        return
    if digest not in {c.digest for c in index.manifest.corpus}:
        log.warning("%s was not built from %s; document ids may not match the qrels", index.path, corpus_path)
