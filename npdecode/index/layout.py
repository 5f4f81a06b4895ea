"""The files of an index dir, and reading them back as one :class:`Index`.

```
INDEX_DIR/
  manifest.json                 table of contents (written last, atomically)
  segments/00000/               the build; each append adds the next segment
    ce.safetensors              vectors (R, d) float32, token_ids (R,) int64: CE rows
    documents.jsonl             one identifier group per line (identifier, doc_ids, digest,
                                tokens = identifier token ids, ce = CE ids of those tokens)
    raw.safetensors             optional raw CE: vectors (N, d), tokens (N,), rows (N,)
  trie-ce-<gen>.npz             trie over the targets in CE ids (+ EOS row), CSR arrays
  trie-token-<gen>.npz          trie over the targets in token ids (+ EOS token)
  store-<gen>.faiss             FAISS store of the whole CE table (store-<gen>.pt without faiss)
  raw-store-<gen>/part-<p>.faiss  with raw_ce: stores over the raw CE vectors, in parts
                                (npdecode/index/rawce.py)
  ivf-<digest>-<nlist>-<seed>.faiss   IVF lists of --normalizer ivf, saved on first use
```

``<gen>`` is the generation, five digits (``00000`` for a build); the manifest's ``files``
names the current ones.

Segments are append-only: CE row ids of a segment continue after the previous one's, so
existing targets never change. The trie and store of generation ``<gen>`` cover all segments;
an append writes generation ``gen + 1`` and switches to it in the manifest.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from npdecode.atomic import atomic_file
from npdecode.index.manifest import IndexManifest, read_manifest
from npdecode.integrity import ensure_intact, reading

SPECIAL_ROWS = ("bos", "eos")  # CE rows 0 and 1: the decoder start token and the EOS token (NpModel defaults)


@dataclass
class DocumentGroup:
    """One identifier and the documents it stands for (a line of ``documents.jsonl``)."""

    identifier: str
    doc_ids: list[str]
    digest: str
    tokens: list[int]  # identifier token ids (no EOS)
    ce: list[int]  # CE row ids of those tokens (no EOS)

    def target(self, mode: str, eos_ce: int, eos_token: int) -> list[int]:
        """The decoder's target for this identifier: its CE ids + the EOS row (``mode="ce"``), or
        its token ids + the EOS token (``"token"``). The one place a target is spelled out."""
        return self.ce + [eos_ce] if mode == "ce" else self.tokens + [eos_token]

    def to_json(self) -> str:
        return json.dumps(
            {
                "identifier": self.identifier,
                "doc_ids": self.doc_ids,
                "digest": self.digest,
                "tokens": self.tokens,
                "ce": self.ce,
            },
            ensure_ascii=False,
        )


def write_segment(
    seg_dir: Path,
    vectors: np.ndarray,
    token_ids: np.ndarray,
    groups: list[DocumentGroup],
    raw=None,
) -> None:
    """Write one segment's CE rows, documents and (optionally) raw CE (a
    :class:`~npdecode.index.rawce.RawSource`)."""
    from safetensors.numpy import save

    seg_dir.mkdir(parents=True, exist_ok=True)
    with atomic_file(seg_dir / "ce.safetensors", "wb") as fh:
        fh.write(
            save(
                {
                    "vectors": np.ascontiguousarray(vectors, dtype=np.float32),
                    "token_ids": np.ascontiguousarray(token_ids, dtype=np.int64),
                }
            )
        )
    with atomic_file(seg_dir / "documents.jsonl") as fh:
        for group in groups:
            fh.write(group.to_json() + "\n")
    if raw is not None:  # a RawSource: written in a streaming pass
        from npdecode.index.rawce import write_raw_file

        write_raw_file(seg_dir / "raw.safetensors", raw)


@dataclass
class Index:
    """An index dir read back: CE table, document groups, manifest (tries and store on demand).

    Membership is append-only too: an append may add documents to an existing group (an
    identical document) and may remove doc ids (``--replace``); ``members[i]`` lists
    ``(doc_id, segment)`` and a removal in segment ``s`` drops memberships from before ``s``.
    """

    path: Path
    manifest: dict[str, Any]
    vectors: np.ndarray  # (R, d) float32 CE table
    token_ids: np.ndarray  # (R,) int64 token id of each CE row
    groups: list[DocumentGroup]
    members: list[list[tuple[str, int]]]
    removed: dict[str, int] = field(default_factory=dict)  # doc id -> segment that removed it

    @property
    def eos_ce(self) -> int:
        return SPECIAL_ROWS.index("eos")

    @property
    def bos_ce(self) -> int:
        return SPECIAL_ROWS.index("bos")

    @property
    def eos_token(self) -> int:
        return int(self.token_ids[self.eos_ce])

    def live_doc_ids(self, group: int) -> list[str]:
        """Doc ids group ``group`` stands for now."""
        return [d for d, seg in self.members[group] if seg >= self.removed.get(d, -1)]

    def live_doc_set(self) -> set[str]:
        return {d for i in range(len(self.groups)) for d in self.live_doc_ids(i)}

    def targets(self, mode: str) -> tuple[list[list[int]], list[int]]:
        """Decoding targets of the groups that still hold a document, and their group indices.

        ``mode="ce"``: CE ids + EOS CE id; ``mode="token"``: token ids + EOS token id.
        """
        seqs, which = [], []
        for i, group in enumerate(self.groups):
            if self.live_doc_ids(i):
                seqs.append(group.target(mode, self.eos_ce, self.eos_token))
                which.append(i)
        return seqs, which

    def trie_path(self, mode: str) -> Path:
        return self.path / getattr(self.manifest.files, f"trie_{mode}")

    def store_path(self) -> Path:
        return self.path / self.manifest.files.store


def rebuild_remedy(path: str | Path) -> str:
    """What to do about a damaged index dir: the tail of every error about one of its files."""
    return (
        f"rebuild the index (`npdecode index CORPUS --model MODEL --out NEW_DIR`); "
        f"`npdecode verify {path}` lists every bad file"
    )


def check_index(path: str | Path, manifest: IndexManifest, *, verify: bool = False) -> None:
    """Every file the manifest records is there with its recorded size, and with ``verify`` its
    recorded digest (each byte read once more); else one NpdecodeError line naming the first bad
    file. An index built before checksums were recorded is not checked."""
    ensure_intact(path, manifest.checksums, digests=verify, remedy=rebuild_remedy(path))


def load_index(path: str | Path, *, verify: bool = False) -> Index:
    """Read an index dir (manifest, every segment's CE rows, documents and membership changes).

    The files are checked against the manifest's checksums first (sizes; with ``verify`` also
    digests, :func:`check_index`), and a file no decoder can read is one NpdecodeError line.
    """
    from safetensors.numpy import load_file

    path = Path(path)
    manifest = read_manifest(path)
    check_index(path, manifest, verify=verify)
    remedy = rebuild_remedy(path)
    vectors, token_ids, groups, members, removed = [], [], [], [], {}
    for s, seg in enumerate(manifest.segments):
        seg_dir = path / "segments" / seg.name
        with reading(seg_dir / "ce.safetensors", remedy):
            ce = load_file(str(seg_dir / "ce.safetensors"))
            vectors.append(ce["vectors"])
            token_ids.append(ce["token_ids"])
        for doc_id in seg.removed:
            removed[doc_id] = s
        with reading(seg_dir / "documents.jsonl", remedy), open(seg_dir / "documents.jsonl", encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    group = DocumentGroup(**json.loads(line))
                    groups.append(group)
                    members.append([(d, s) for d in group.doc_ids])
        for group_index, doc_ids in seg.joins.items():
            members[int(group_index)] += [(d, s) for d in doc_ids]
    return Index(path, manifest, np.concatenate(vectors), np.concatenate(token_ids), groups, members, removed)
