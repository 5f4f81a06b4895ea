"""``npdecode index CORPUS --append INDEX_DIR [--replace]``: add documents without retraining.

New documents are encoded with the index's model (same config), their identifier tokens go to
the nearest existing CE row of the same token (docs/np-decoding.md step 9; with ``k = 0`` every
occurrence gets its own row, as in a build), unseen tokens get new rows (clustered like a
build), and their paths join the tries. Existing segments are never rewritten: the new rows
and documents form the next segment, and the tries and stores move to the next generation.
A document identical to an indexed one joins its identifier; a document id already in the
index is refused unless ``replace``, which retires the old version. As in a build, documents
with neither title nor text are skipped (an empty new version under ``replace`` still retires
the old one: the document is gone, as a rebuild would have it) and identifiers too long for
the encoder input are cut, unique against the index's; the segment entry records both.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from npdecode.errors import NpdecodeError
from npdecode.index.config import APPEND_KEYS, IndexConfig
from npdecode.index.layout import SPECIAL_ROWS, Index, load_index, write_segment
from npdecode.index.manifest import (
    CorpusEntry,
    Counts,
    GenerationFiles,
    IndexManifest,
    SegmentEntry,
    model_digest,
    now,
    package_versions,
    write_manifest,
)
from npdecode.index.rawce import RawSource


def append_to_index(
    corpus: str | Path,
    index_dir: str | Path,
    *,
    replace: bool = False,
    runtime: dict | None = None,
    allow_mixed_precision: bool = False,
) -> IndexManifest:
    """Add the documents of ``corpus`` to ``index_dir``; returns the new manifest.

    Each segment records the precision its CE was computed in (``32-true``, ``bf16-mixed``);
    an append that would compute in another one is refused unless ``allow_mixed_precision``
    (bf16 CE sit ~1e-2 away from fp32 CE of the same text: nearest rows and scores shift)."""
    from npdecode.backbone import load_backbone
    from npdecode.corpus import corpus_digest, load_corpus
    from npdecode.index.assembly import make_records, read_occurrences
    from npdecode.index.builder import (
        drop_empty,
        encode_shards,
        fit_to_backbone,
        identify,
        prepare_work_dir,
        segment_notes,
    )

    index_dir = Path(index_dir)
    index = load_index(index_dir)
    manifest = index.manifest
    config = _append_config(manifest, runtime or {})
    docs = load_corpus(corpus)
    removed = _check_ids(index, docs, replace)
    docs, empty = drop_empty(docs, corpus)
    model_ref = manifest.model.ref
    if manifest.model.digest is not None and model_digest(model_ref) != manifest.model.digest:
        raise NpdecodeError(f"{model_ref}: the model changed since {index_dir} was built; rebuild the index")
    precision = _check_precision(manifest, config, allow_mixed_precision, index_dir)
    backbone = load_backbone(model_ref)
    config = fit_to_backbone(config, backbone, model_ref)

    joins, fresh = _join_identical(index, docs)
    groups, ident_tokens = identify(backbone, fresh, config, corpus, taken={g.identifier for g in index.groups})
    seg = len(manifest.segments)
    name = f"{seg:05d}"
    work = index_dir / f".append-{name}"
    plan = {"corpus_digest": corpus_digest(corpus), "segment": name, "groups": len(groups)}
    shard_dir = prepare_work_dir(work, plan)
    if groups and encode_shards(backbone, groups, shard_dir, config) != 0:
        return manifest  # other ddp ranks only encode
    if groups:
        occ = read_occurrences(shard_dir, ident_tokens, config.shard_size)
    else:
        occ = {"vectors": np.zeros((0, index.vectors.shape[1]), np.float32), "tokens": np.zeros(0, np.int64)}
    rows, row_tokens, ce_ids = place_occurrences(index, occ["vectors"], occ["tokens"], config)
    records = make_records(groups, ident_tokens, ce_ids)
    raw = RawSource.from_arrays(occ["vectors"], occ["tokens"], ce_ids) if config.raw_ce else None
    write_segment(index_dir / "segments" / name, rows, row_tokens, records, raw)

    entry = {
        "name": name,
        "rows": len(rows),
        "groups": len(records),
        "precision": precision,
        "removed": sorted(removed),
        "joins": {str(g): ids for g, ids in sorted(joins.items())},
        **segment_notes(empty, groups),
    }
    new_manifest = _next_generation(index, entry, rows, row_tokens, records, raw)
    new_manifest.corpus.append(
        CorpusEntry(path=str(Path(corpus).resolve()), digest=plan["corpus_digest"], segment=name)
    )
    write_manifest(index_dir, new_manifest)
    from npdecode.index.generation import remove_generation

    remove_generation(index_dir, manifest.files.model_dump(exclude_none=True))
    for stale in index_dir.glob("ivf-*.faiss"):  # IVF normalizers of the old table (rebuilt on first use)
        stale.unlink(missing_ok=True)
    shutil.rmtree(work, ignore_errors=True)
    return new_manifest


def place_occurrences(index: Index, vectors: np.ndarray, tokens: np.ndarray, config: IndexConfig):
    """Rows to add and the global CE id of each new occurrence, as close to a rebuild as an
    append can get without rewriting existing rows.

    ``k = 0``: one new row per occurrence. Otherwise, per token: a known token with fewer than
    ``k`` rows first gets new rows up to ``k`` (its new occurrences clustered into at most the
    spare count, as a build clusters); then every occurrence of a known token goes to the
    nearest row of that token, old or new (special rows excluded); occurrences of unseen tokens
    are clustered into new rows. Returns (new rows (r, d), their token ids (r,), CE ids (N,)).
    """
    from npdecode.index.clustering import assign_to_existing, cluster_by_token
    from npdecode.index.config import kmeans_sample_size

    sample = kmeans_sample_size(config)
    base = len(index.vectors)
    dim = index.vectors.shape[1]
    if config.k == 0 or not len(tokens):
        clustered = cluster_by_token(
            vectors, tokens, config.k, iterations=config.kmeans_iterations, seed=config.seed, sample=sample
        )
        return clustered.rows, clustered.row_tokens, base + clustered.assignment
    n_special = len(SPECIAL_ROWS)
    old_rows, old_tokens = index.vectors[n_special:], index.token_ids[n_special:]
    have = dict(zip(*np.unique(old_tokens, return_counts=True)))
    spare_rows, spare_tokens = [np.zeros((0, dim), np.float32)], [np.zeros(0, np.int64)]
    by_spare: dict[int, list[int]] = {}
    for token in np.unique(tokens):
        spare = config.k - int(have.get(int(token), 0))
        if int(token) in have and spare > 0:
            by_spare.setdefault(spare, []).append(int(token))
    for spare, spare_set in sorted(by_spare.items()):
        members = np.flatnonzero(np.isin(tokens, spare_set))
        grown = cluster_by_token(
            vectors[members],
            tokens[members],
            spare,
            iterations=config.kmeans_iterations,
            seed=config.seed,
            sample=sample,
        )
        spare_rows.append(grown.rows)
        spare_tokens.append(grown.row_tokens)
    spare_rows, spare_tokens = np.concatenate(spare_rows), np.concatenate(spare_tokens)
    # nearest row of the same token among the old rows and the spare-capacity rows
    candidates = np.concatenate([old_rows, spare_rows])
    candidate_tokens = np.concatenate([old_tokens, spare_tokens])
    nearest = assign_to_existing(vectors, tokens, candidates, candidate_tokens)
    ce_ids = np.full(len(tokens), -1, dtype=np.int64)
    known = nearest >= 0
    ce_ids[known] = np.where(
        nearest[known] < len(old_rows), nearest[known] + n_special, base + nearest[known] - len(old_rows)
    )
    unseen = np.flatnonzero(~known)
    clustered = cluster_by_token(
        vectors[unseen], tokens[unseen], config.k, iterations=config.kmeans_iterations, seed=config.seed, sample=sample
    )
    ce_ids[unseen] = base + len(spare_rows) + clustered.assignment
    return (
        np.concatenate([spare_rows, clustered.rows]).astype(np.float32),
        np.concatenate([spare_tokens, clustered.row_tokens]),
        ce_ids,
    )


def _check_precision(manifest: dict, config: IndexConfig, allow_mixed: bool, index_dir: Path) -> str:
    """The precision this append computes CE in; refused if the index's segments used another."""
    from npdecode.index.builder import resolve_precision

    precision = resolve_precision(config)
    used = sorted({s.precision for s in manifest.segments if s.precision})
    if used and precision not in used and not allow_mixed:
        flag = {"32-true": "32", "bf16-mixed": "bf16"}.get(used[0], used[0])
        raise NpdecodeError(
            f"{index_dir} holds CE computed in {', '.join(used)}; this append would use {precision}. "
            f"Pass --precision {flag} (or --accelerator matching the build), or "
            "--allow-mixed-precision to mix them"
        )
    return precision


def _append_config(manifest: dict, runtime: dict) -> IndexConfig:
    fixed = {k: v for k, v in runtime.items() if v is not None and k not in APPEND_KEYS}
    if fixed:
        raise NpdecodeError(
            f"--append keeps the index's settings; {', '.join(sorted(fixed))} cannot change "
            "(rebuild the index to change them)"
        )
    data = dict(manifest.config)
    data.update({k: v for k, v in runtime.items() if v is not None})
    return IndexConfig(**data)


def _check_ids(index: Index, docs: dict, replace: bool) -> set[str]:
    """Doc ids the append retires (``replace``); existing ids without it are refused."""
    clash = sorted(set(docs) & index.live_doc_set())
    if clash and not replace:
        shown = ", ".join(repr(d) for d in clash[:5]) + (" ..." if len(clash) > 5 else "")
        raise NpdecodeError(
            f"{len(clash)} document id(s) already in {index.path} ({shown}); pass --replace to replace them"
        )
    return set(clash)


def _join_identical(index: Index, docs: dict) -> tuple[dict[int, list[str]], dict]:
    """Split new documents into those identical to an indexed group (joined) and the rest."""
    from npdecode.index.identifiers import content_digest

    by_digest: dict[str, int] = {}
    for i, g in enumerate(index.groups):  # a live group wins over a retired one with the same text
        if g.digest not in by_digest or index.live_doc_ids(i):
            by_digest[g.digest] = i
    joins: dict[int, list[str]] = {}
    fresh = {}
    for doc_id in sorted(docs):
        doc = docs[doc_id]
        group = by_digest.get(content_digest(doc.get("title") or "", doc.get("text") or ""))
        if group is None:
            fresh[doc_id] = doc
        else:
            joins.setdefault(group, []).append(doc_id)
    return joins, fresh


def _next_generation(index: Index, entry: dict, rows, row_tokens, records, raw) -> IndexManifest:
    """Extend (or, after removals, rebuild) the tries; add the new rows to the stores."""
    from npdecode.index.generation import build_tries, save_generation, trie_counts
    from npdecode.index.store import load_store
    from npdecode.trie import Trie

    manifest = index.manifest.model_copy(deep=True)
    manifest.segments.append(SegmentEntry(**entry))
    updated = _apply_entry(index, entry, records, rows, row_tokens)
    first_new = len(index.groups)
    was_live = {i for i in range(len(index.groups)) if index.live_doc_ids(i)}
    still_live = {i for i in range(len(index.groups)) if updated.live_doc_ids(i)}
    if was_live == still_live:
        tries = {}
        for mode in ("ce", "token"):
            seqs = [r.target(mode, updated.eos_ce, updated.eos_token) for r in records]
            tries[mode] = Trie.load(index.trie_path(mode)).extend(
                seqs, list(range(first_new, first_new + len(records)))
            )
    else:
        seqs, which = {}, None
        for mode in ("ce", "token"):
            seqs[mode], which = updated.targets(mode)
        tries = build_tries(seqs, which)
    store = load_store(index.store_path())
    store.add(rows)
    generation = manifest.generation + 1
    config = index.manifest.config
    files = save_generation(
        index.path,
        generation,
        tries,
        store,
        raw,
        index.manifest.files.raw_store,
        factory=config.get("factory", "Flat"),
        part_mb=config.get("cluster_memory_mb", 2048),
    )
    manifest.files = GenerationFiles(**files)
    manifest.generation, manifest.updated, manifest.versions = generation, now(), package_versions()
    manifest.counts = Counts(
        documents=len(updated.live_doc_set()),
        identifiers=len(still_live) + len(records),
        occurrences=manifest.counts.occurrences + sum(len(r.tokens) for r in records),
        ce_rows=len(updated.vectors),
        **trie_counts(tries),
    )
    return manifest


def _apply_entry(index: Index, entry: dict, records, rows, row_tokens) -> Index:
    """The index as it reads once ``entry`` (the new segment) is in the manifest."""
    seg = len(index.manifest.segments)
    members = [list(m) for m in index.members] + [[(d, seg) for d in r.doc_ids] for r in records]
    for group, doc_ids in entry["joins"].items():
        members[int(group)] += [(d, seg) for d in doc_ids]
    removed = dict(index.removed)
    removed.update({d: seg for d in entry["removed"]})
    return Index(
        index.path,
        index.manifest,
        np.concatenate([index.vectors, rows]),
        np.concatenate([index.token_ids, row_tokens]),
        index.groups + list(records),
        members,
        removed,
    )
