"""How a retriever searches: one frozen, strictly validated options object.

``npdecode search``, ``npdecode eval`` and the Python API (:func:`~npdecode.search.build_retriever`,
:class:`~npdecode.search.GenerativeRetriever`) all read these fields, and each default is written
here only. An unknown or mistyped option is an error, never a silent default.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from npdecode.config import validated


class SearchOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # np / genre: the index dir to search, and a checkpoint to decode with instead of the one
    # the index records
    index: Path | None = None
    gr_model: str | None = None
    # dense: the encoder (hub id or path; None: all-MiniLM-L6-v2) and its input cut (None: the model's)
    model: str | None = None
    max_length: int | None = Field(None, ge=8)
    # np / genre decoding
    beam: int = Field(10, ge=1)
    trie_mode: Literal["ce", "token", "group"] | None = None  # None: the index config's
    # finished hypotheses score sum / length**L (HF's beam scorer; 0: the raw sum). 1.0, the
    # paper's: it scored higher than 0 on the validation queries of every trained SciFact run
    # (benchmarks/results/scifact_gr.md)
    length_penalty: float = 1.0
    normalizer: str = "exact"  # or ivf[:NPROBE[:TOPK[:NLIST]]] (approximate, CPU)
    # np: weight of the CE memory's lookahead (npdecode/memory.py; 0: plain Np decoding; None:
    # the checkpoint's own setting, model.memory_weight of its training config, else 0)
    memory_weight: float | None = Field(None, ge=0)
    # np / genre: how documents past the beam's finished ones are found (npdecode/decoding.py):
    # "prefix" ranks them by the score of their longest prefix the search scored (no more decoding;
    # ~1x the one-beam time), "widen" decodes again with doubled beams until k are found (exact
    # beam search at width k; ~50x at k = 1,000), "none" returns the beam's only
    past_beam: Literal["prefix", "widen", "none"] = "prefix"
    progress: bool | None = None  # a progress bar over queries for long searches (None: on a terminal)
    dtype: Literal["fp32", "bf16", "auto"] | None = None  # cast model and CE for decoding (None: as loaded)
    # every retriever
    batch_size: int | None = Field(None, ge=1)
    device: str = "auto"  # auto, cpu or cuda[:n]
    # np / genre: check the digests of the index's and the checkpoint's files at load (sizes are
    # always checked; benchmarks/results/verify_cost.md measured what digests cost)
    verify: bool = False
    cache_dir: Path | None = None  # baseline indexes and encoded corpora

    @classmethod
    def of(cls, options: SearchOptions | Mapping[str, Any] | None = None, **overrides: Any) -> SearchOptions:
        """``options`` (an object or a mapping whose None values mean "the default") with
        ``overrides`` applied; unknown keys and bad values are one-line errors."""
        data = options.model_dump() if isinstance(options, SearchOptions) else dict(options or {})
        data.update(overrides)
        return validated(cls, {k: v for k, v in data.items() if v is not None}, "search options", "search options")
