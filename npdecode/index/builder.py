"""``npdecode index CORPUS --model MODEL --out INDEX_DIR``: build an index dir, resumably.

Work happens in ``.<name>.partial/`` beside the output: ``plan.json`` (what is being built),
``shards/`` (one file per encoded shard) and ``index/`` (the final files). The finished
``index/`` is renamed to INDEX_DIR in one step, so INDEX_DIR either does not exist or is
complete. Run the same command again after an interruption and only missing shards are
encoded; a different corpus, model or config starts the partial work over.
"""

from __future__ import annotations

import array
import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from npdecode.device import launcher_rank
from npdecode.errors import NpdecodeError
from npdecode.index.config import PLACEMENT_KEYS, IndexConfig
from npdecode.index.identifiers import (
    IdentifierGroup,
    IdentifierTable,
    MemoryDocuments,
    TokenLists,
    fit_table,
    split_empty,
)
from npdecode.index.layout import write_segment
from npdecode.index.manifest import (
    FORMAT,
    DocList,
    config_digest,
    model_digest,
    now,
    package_versions,
    write_manifest,
)

log = logging.getLogger(__name__)


def build_index(
    corpus: str | Path, model, out: str | Path, config: IndexConfig | None = None, *, model_ref: str | None = None
) -> Path:
    """Build INDEX_DIR ``out`` from ``corpus`` with the encoder of ``model``; returns ``out``.

    ``model`` is a model path or hub id, or a loaded :class:`~npdecode.backbone.Backbone` (a
    model in memory, e.g. one being trained; ``model_ref`` is then what the manifest names).
    Documents with neither title nor text are skipped and identifiers longer than the encoder
    input allows are cut (one warning each, recorded in the manifest's segment entry). User
    mistakes (unreadable corpus, a corpus of empty documents only, missing model, an existing
    ``out``) raise NpdecodeError before anything is written.
    """
    from npdecode.corpus import corpus_digest

    config = config or IndexConfig()
    out = Path(out)
    if out.exists():
        raise NpdecodeError(f"{out} already exists; remove it, or add documents with --append {out}")
    # beside the work dir, one per launched process (a multi-node run starts the command on every
    # node, each reads the corpus); a resume rebuilds it
    rank = launcher_rank()
    store_path = out.parent / (f".{out.name}.corpus.sqlite" if rank == 0 else f".{out.name}.corpus-{rank}.sqlite")
    docs = None
    try:
        docs, empty = open_corpus(corpus, store_path)  # a bad corpus: one line, before any model output
        backbone, ref, digest = _open_backbone(model, model_ref)
        config = fit_to_backbone(config, backbone, ref)
        groups, ident_tokens = identify(backbone, docs, config, corpus)
        plan = {
            # how the encoding is spread does not change the shards: a resume may use other devices
            "format": FORMAT,
            "config": config.model_dump(exclude=set(PLACEMENT_KEYS)),
            "corpus_digest": corpus_digest(corpus),
            "model": ref,
            "model_digest": digest,
            "groups": len(groups),
        }
        partial = out.parent / f".{out.name}.partial"
        shard_dir = prepare_work_dir(partial, plan)
        rank = encode_shards(backbone, groups, shard_dir, config)
        rank = cluster_in_parallel(ident_tokens, shard_dir, partial, config, rank)
        if rank != 0:
            return out  # other ddp ranks (multi-node runs) encode and cluster their share
        from npdecode.index.assembly import assemble_from_shards

        segment = assemble_from_shards(backbone, groups, ident_tokens, shard_dir, partial, config)
        write_index(
            partial / "index",
            segment,
            config,
            corpus=corpus,
            model_ref=ref,
            model_digest=digest,
            family=backbone.family,
            groups=groups,
            ident_tokens=ident_tokens,
            empty=empty,
        )
        os.replace(partial / "index", out)
        shutil.rmtree(partial, ignore_errors=True)
    finally:
        if docs is not None:
            docs.close()
        store_path.unlink(missing_ok=True)
    return out


def open_corpus(corpus: str | Path, store_path: Path):
    """The corpus streamed into an on-disk :class:`~npdecode.index.docstore.DocStore` at
    ``store_path`` and the ids of its empty documents (skipped with one warning, as
    :func:`drop_empty` does); a corpus of empty documents only is an error."""
    from npdecode.corpus import corpus_file
    from npdecode.index.docstore import DocStore

    docs, empty = DocStore.build(corpus, store_path)
    report_empty(len(docs), empty, corpus_file(corpus))
    return docs, empty


def _open_backbone(model, model_ref: str | None):
    """(backbone, the model's name in the manifest, its digest) for a path/hub id or a Backbone."""
    from npdecode.backbone import Backbone, load_backbone
    from npdecode.index.manifest import weights_digest

    if isinstance(model, Backbone):
        return model, model_ref or "<in memory>", weights_digest(model.model)
    ref = model_ref or (str(Path(model).resolve()) if Path(model).exists() else str(model))
    return load_backbone(model), ref, model_digest(model)


def write_index(
    final: Path,
    segment,
    config: IndexConfig,
    *,
    corpus: str | Path,
    model_ref: str,
    model_digest: str | None,
    family: str,
    groups: IdentifierTable,
    ident_tokens: TokenLists,
    empty: list[str],
) -> Path:
    """Write a complete one-segment index dir at ``final`` (replaced if there) from ``segment``
    = (rows, row tokens, document records, raw CE or None), manifest last. ``empty``: the ids
    of the corpus's documents with neither title nor text (skipped, recorded in the manifest)."""
    from npdecode.corpus import corpus_digest
    from npdecode.index.assembly import write_first_generation

    rows, row_tokens, records, raw = segment
    shutil.rmtree(final, ignore_errors=True)
    write_segment(final / "segments" / "00000", rows, row_tokens, records, raw)
    files, counts = write_first_generation(final, rows, row_tokens, records, raw, config)
    manifest = {
        "format": FORMAT,
        "created": now(),
        "updated": now(),
        "config": config.model_dump(),
        "config_digest": config_digest(config.model_dump()),
        "model": {"ref": model_ref, "digest": model_digest, "family": family},
        "corpus": [{"path": str(Path(corpus).resolve()), "digest": corpus_digest(corpus), "segment": "00000"}],
        "segments": [
            {
                "name": "00000",
                "rows": len(rows),
                "groups": len(records),
                "precision": resolve_precision(config),
                **segment_notes(empty, groups),
            }
        ],
        "generation": 0,
        "files": files,
        "counts": {
            "documents": groups.n_documents,
            "identifiers": len(groups),
            "occurrences": ident_tokens.total,
            "ce_rows": len(rows),
            **counts,
        },
        "versions": package_versions(),
    }
    write_manifest(final, manifest)
    return final


class CERebuilder:
    """CE, clustering and document targets of ``corpus`` from a model *in memory*, as
    ``npdecode index`` would make them with that model's current weights (same batches, same
    clustering): the async CE encoder calls it while the model trains.

    ``rebuild(backbone, rank, world_size)`` returns the segment (rows, row tokens, records, None);
    under ddp every rank encodes its share of the shards and every rank gets the whole result.

    ``frozen_below=k``: the encoder's layers below ``k`` (and its embeddings) never change while
    the model trains, so the states entering layer ``k`` are computed at the first rebuild, kept
    (up to ``cache_gib`` GiB; batches beyond it run the whole encoder each time) and later rebuilds
    run only the layers from ``k`` up. Same result as without.
    """

    def __init__(
        self, corpus: str | Path, config: IndexConfig, backbone, frozen_below: int | None = None, cache_gib: float = 4.0
    ) -> None:
        from npdecode.corpus import load_corpus

        self.corpus = Path(corpus)
        self.config = fit_to_backbone(config, backbone, "the model")
        docs, self.empty = drop_empty(load_corpus(corpus), corpus)
        self.groups, self.ident_tokens = identify(backbone, docs, self.config, corpus)  # as build_index makes them
        self.frozen_below, self.cache_bytes = frozen_below, int(cache_gib * 2**30)
        self.bottom: dict[tuple[int, int], object] = {}  # (first group, batch size) -> states entering layer k
        self.bottom_bytes = 0

    def rebuild(self, backbone, rank: int = 0, world_size: int = 1, progress: bool = False):
        encoder = backbone.encoder
        modes = [(m, m.training) for m in encoder.modules()]  # a partly trained encoder mixes modes
        encoder.eval()  # no dropout in the special rows either
        try:
            return self._rebuild(backbone, rank, world_size, progress)
        finally:
            for module, training in modes:
                module.training = training

    def _rebuild(self, backbone, rank: int, world_size: int, progress: bool):
        from npdecode.index.assembly import assemble_segment, check_occurrences
        from npdecode.index.extraction import ShardBatches, encode_in_memory, shard_count

        c = self.config
        data = ShardBatches(
            list(encoder_inputs(self.groups)),
            range(shard_count(len(self.groups), c.shard_size)),
            backbone.tokenize_with_identifier,
            backbone.pad_token_id,
            shard_size=c.shard_size,
            max_length=c.max_length,
            batch_tokens=c.batch_tokens,
            batch_size=c.batch_size,
        )
        hidden = self._from_cached_bottom(backbone) if self.frozen_below is not None else None
        occ = encode_in_memory(
            backbone.encoder,
            data,
            precision=resolve_precision(c),
            rank=rank,
            world_size=world_size,
            hidden_states=hidden,
            progress=progress,
        )
        check_occurrences(occ, self.ident_tokens, "the in-memory encoding")
        rows, row_tokens, records, _ = assemble_segment(
            backbone, self.groups, self.ident_tokens, occ, c.model_copy(update={"raw_ce": False})
        )
        return rows, row_tokens, records, None

    def _from_cached_bottom(self, backbone):
        """A batch's encoder output from the kept states entering layer ``frozen_below``."""
        split = self.frozen_below

        def hidden_states(batch: dict):
            ids, mask = batch["input_ids"], batch["attention_mask"]
            key = (int(batch["groups"][0]), len(batch["groups"]))  # the batches are the same every time
            states = self.bottom.get(key)
            if states is None:
                states = backbone.encode_until(ids, mask, split)
                size = states.numel() * states.element_size()
                if self.bottom_bytes + size <= self.cache_bytes:
                    self.bottom[key], self.bottom_bytes = states, self.bottom_bytes + size
            return backbone.encode_from(states.to(ids.device), ids, mask, split)

        return hidden_states

    def build_index(self, backbone, out: Path, model_ref: str, model_digest: str | None) -> Path:
        """Write INDEX_DIR ``out`` in memory (no shards, no resume): what :func:`build_index` makes
        with ``backbone``, and with ``frozen_below`` the kept states are filled on the way (a run
        whose encoder's top layers train builds its first index so: its first rebuild then runs
        the top layers only)."""
        partial = out.parent / f".{out.name}.memory"
        write_index(
            partial,
            self.rebuild(backbone, progress=self.config.progress),
            self.config,
            corpus=self.corpus,
            model_ref=model_ref,
            model_digest=model_digest,
            family=backbone.family,
            groups=self.groups,
            ident_tokens=self.ident_tokens,
            empty=self.empty,
        )
        os.replace(partial, out)
        return out


def fit_to_backbone(config: IndexConfig, backbone, model: str | Path) -> IndexConfig:
    """``config`` with ``max_length`` cut to the positions the backbone has (BART, BERT: learned
    positions); said once in the log, and the manifest records the value used."""
    limit = backbone.fit_length(config.max_length)
    if limit == config.max_length:
        return config
    log.warning(
        "%s takes at most %d input positions: CE contexts are cut to %d tokens (max_length was %d)",
        model,
        limit,
        limit,
        config.max_length,
    )
    return config.model_copy(update={"max_length": limit})


def drop_empty(docs: dict, corpus: str | Path) -> tuple[dict, list[str]]:
    """(``docs`` without those with neither title nor text, the sorted ids left out).

    Such a document has no identifier, so it cannot be indexed: it is skipped with one warning
    (an evaluation counts it as never retrieved). A corpus of only such documents is an error.
    """
    from npdecode.corpus import corpus_file

    kept, empty = split_empty(docs)
    report_empty(len(kept), empty, corpus_file(corpus))
    return kept, empty


def report_empty(kept: int, empty: list[str], source: Path) -> None:
    """One warning naming the skipped empty documents; an error when nothing else is left."""
    if not kept:
        which = "its only document has" if len(empty) == 1 else f"all {len(empty)} documents have"
        raise NpdecodeError(f"{source}: {which} neither title nor text; nothing to index")
    if empty:
        log.warning(
            "%s: skipped %s with neither title nor text: %s", source, _count(len(empty), "document"), _shown(empty)
        )


def identify(
    backbone, docs, config: IndexConfig, corpus: str | Path, taken: set[str] | frozenset[str] = frozenset()
) -> tuple[IdentifierTable, TokenLists]:
    """Identifier groups of ``docs`` (a dict without empty documents, or a
    :class:`~npdecode.index.docstore.DocStore`) and their token ids. Every identifier fits the
    encoder input of ``config.max_length`` tokens: longer ones are cut (one warning).

    ``taken``: identifiers already in the index (an append); new ones avoid them.
    """
    from npdecode.corpus import corpus_file

    documents = docs if hasattr(docs, "id_order") else MemoryDocuments(docs)
    groups = IdentifierTable.build(documents, config.max_identifier_words, taken)
    budget = identifier_budget(backbone, config.max_length)
    tokens = fit_table(groups, tokenize_identifiers(backbone, groups), backbone.tokenize_identifier, budget, taken)
    cut = groups.cut_doc_ids()
    if cut:
        log.warning(
            "%s: cut %s to the %d tokens that max_length=%d leaves: %s",
            corpus_file(corpus),
            _count(len(cut), "identifier"),
            budget,
            config.max_length,
            _shown(cut),
        )
    return groups, tokens


def identifier_budget(backbone, max_length: int) -> int:
    """The most identifier tokens an encoder input of ``max_length`` holds: all of it but the
    special tokens the backbone adds around a text (T5: EOS; BERT: [CLS] and [SEP])."""
    ids, positions = backbone.tokenize_with_identifier("a", "", max_length)
    return max_length - (len(ids) - len(positions))


def segment_notes(empty: list[str], groups: IdentifierTable) -> dict[str, dict]:
    """The ``skipped`` and ``cut_identifiers`` fields of a segment's manifest entry (only those
    with something to say, so a clean corpus gives the entry it always had)."""
    notes: dict[str, dict] = {}
    if empty:
        notes["skipped"] = {"empty": DocList.of(empty).model_dump()}
    cut = groups.cut_doc_ids()
    if cut:
        notes["cut_identifiers"] = DocList.of(cut).model_dump()
    return notes


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _shown(ids: list[str], first: int = 5) -> str:
    return ", ".join(repr(d) for d in ids[:first]) + (", ..." if len(ids) > first else "")


def tokenize_identifiers(backbone, groups: IdentifierTable | Sequence[IdentifierGroup]) -> TokenLists:
    """Identifier token ids per group; an identifier without tokens is a clear error."""
    flat, offsets = array.array("i"), array.array("q", [0])
    table = isinstance(groups, IdentifierTable)
    for i in range(len(groups)):
        identifier = groups.identifier(i) if table else groups[i].identifier
        ids = backbone.tokenize_identifier(identifier)
        if not ids:
            doc_id = groups.first_doc_id(i) if table else groups[i].doc_ids[0]
            raise NpdecodeError(
                f"document {doc_id!r}: identifier {identifier!r} has no tokens "
                "for this model's tokenizer; give it a title or text the tokenizer can read"
            )
        flat.extend(ids)
        offsets.append(len(flat))
    return TokenLists(np.frombuffer(flat, dtype=np.int32).copy(), np.frombuffer(offsets, dtype=np.int64).copy())


def encoder_inputs(groups: IdentifierTable | Sequence[IdentifierGroup]) -> Sequence[tuple[str, str]]:
    """``(identifier, text)`` per group: what CE extraction encodes (read on demand from a table)."""
    if isinstance(groups, IdentifierTable):
        return groups.inputs()
    return [(g.identifier, g.text) for g in groups]


def encode_shards(backbone, groups: IdentifierTable, shard_dir: Path, config: IndexConfig) -> int:
    """Encode every shard that has no file yet (a Lightning predict loop over the devices).

    Returns the global rank of this process (0 when nothing was left to encode here).
    """
    from npdecode.index.extraction import CEExtractor, ShardData, run_extraction, shard_count, shard_path

    n_shards = shard_count(len(groups), config.shard_size)
    todo = [s for s in range(n_shards) if not shard_path(shard_dir, s).is_file()]
    if len(todo) < n_shards:
        log.info("resuming: %d of %d shards already encoded", n_shards - len(todo), n_shards)
    if not todo:
        return 0 if launcher_rank() == 0 else 1
    data = ShardData(
        encoder_inputs(groups),
        todo,
        backbone.tokenize_with_identifier,
        backbone.pad_token_id,
        shard_size=config.shard_size,
        max_length=config.max_length,
        batch_tokens=config.batch_tokens,
        batch_size=config.batch_size,
    )
    return run_extraction(
        CEExtractor(backbone.encoder),
        data,
        shard_dir,
        accelerator=config.accelerator,
        devices=config.devices,
        num_nodes=config.num_nodes,
        strategy=resolve_strategy(config),
        precision=resolve_precision(config),
        progress=config.progress,
    )


def cluster_in_parallel(ident_tokens: TokenLists, shard_dir: Path, work: Path, config: IndexConfig, rank: int) -> int:
    """Cluster the token ranges and assign the shards over the build's processes
    (``devices x num_nodes``; :mod:`npdecode.index.streaming`), leaving their files in ``work``
    for rank 0 to gather. One node: a Lightning Fabric ``ddp_spawn`` launch of ``devices`` CPU
    processes (clustering is numpy work); several nodes: the process group the encoding loop
    set up. Returns this process's rank (``rank``, from the encoding, when nothing runs here)."""
    if config.devices * config.num_nodes == 1 or config.k == 0:
        return rank
    if resolve_strategy(config) == "ddp_spawn":
        from lightning_fabric import Fabric

        from npdecode.index.extraction import quiet_lightning

        with quiet_lightning():
            fabric = Fabric(accelerator="cpu", devices=config.devices, strategy="ddp_spawn")
            fabric.launch(_cluster_rank, ident_tokens, str(shard_dir), str(work), config)
        return rank
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return rank  # nothing was encoded in this run (a resume): rank 0 clusters alone
    _cluster_share(ident_tokens, shard_dir, work, config, dist.get_rank(), dist.get_world_size(), dist.barrier)
    return dist.get_rank()


def _cluster_rank(fabric, ident_tokens, shard_dir: str, work: str, config: IndexConfig) -> None:
    _cluster_share(
        ident_tokens, Path(shard_dir), Path(work), config, fabric.global_rank, fabric.world_size, fabric.barrier
    )


def _cluster_share(ident_tokens, shard_dir: Path, work: Path, config: IndexConfig, rank, world_size, barrier) -> None:
    from npdecode.index.assembly import cluster_index_shards

    barrier_named = lambda name: barrier()  # Fabric's and torch's barriers take no name
    cluster_index_shards(ident_tokens, shard_dir, work, config, rank=rank, world_size=world_size, barrier=barrier_named)


def resolve_strategy(config: IndexConfig) -> str:
    """ddp_spawn on one node (the calling process keeps the corpus and writes the index);
    ddp across nodes, where the cluster launches the command on every node."""
    if config.strategy != "auto":
        return config.strategy
    if config.num_nodes > 1:
        return "ddp"
    return "ddp_spawn" if config.devices > 1 else "auto"


def resolve_precision(config: IndexConfig) -> str:
    """bf16 autocast on CUDA devices with bf16 support, fp32 elsewhere (precision=auto)."""
    if config.precision == "bf16":
        return "bf16-mixed"
    if config.precision == "32" or config.accelerator == "cpu":
        return "32-true"
    import torch

    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def prepare_work_dir(work: Path, plan: dict) -> Path:
    """The shard dir of a build's or an append's work dir: reused if ``work`` was started for
    the same ``plan`` (a resume), otherwise started over. ``plan.json`` is written atomically
    and only by rank 0 (other ranks of a multi-node run read it)."""
    from npdecode.atomic import atomic_file

    plan_file = work / "plan.json"
    if plan_file.is_file() and json.loads(plan_file.read_text()) != plan:
        log.info("%s was started for another corpus, model or config: starting over", work)
        shutil.rmtree(work)
    if launcher_rank() == 0 or not plan_file.is_file():
        (work / "shards").mkdir(parents=True, exist_ok=True)
        with atomic_file(plan_file) as fh:
            fh.write(json.dumps(plan, sort_keys=True))
    return work / "shards"
