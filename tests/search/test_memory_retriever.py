"""The np retriever with the CE memory: wired to the index's rows, the checkpoint's default, the
config key; a dominant weight returns the best-memory document even with a beam of one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from npdecode.backbone import load_backbone
from npdecode.errors import NpdecodeError
from npdecode.index.builder import build_index
from npdecode.index.layout import load_index
from npdecode.model import load_model, save_model
from npdecode.search.retrievers.generative import GenerativeRetriever
from npdecode.train.config import ModelConfig
from tests.index.helpers import fast_config, toy_corpus_file

QUERIES = {"q1": "river castle gold", "q2": "alpha storm", "q3": "beta"}


@pytest.fixture(scope="module")
def index_dir(t5_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("memory")
    return build_index(toy_corpus_file(tmp, n_docs=14, seed=4), t5_dir, tmp / "idx", fast_config())


def _best_by_memory(index_dir, t5_dir) -> dict[str, str]:
    """Top document per query by cos(mean query state, mean CE row of the identifier), in numpy."""
    index = load_index(index_dir)
    bb = load_backbone(t5_dir)
    out = {}
    for qid, text in QUERIES.items():
        enc = bb.tokenizer([text], return_tensors="pt")
        with torch.no_grad():
            states = bb.encode(enc["input_ids"], enc["attention_mask"])[0].numpy()  # (T, d)
        u = states.mean(0) / np.linalg.norm(states.mean(0))
        scores = []
        for g in index.groups:
            p = index.vectors[g.ce].mean(0)
            scores.append(float(u @ (p / np.linalg.norm(p))))
        out[qid] = index.groups[int(np.argmax(scores))].doc_ids[0]
    return out


def test_a_dominant_memory_weight_finds_the_best_memory_document_with_one_beam(index_dir, t5_dir):
    run = GenerativeRetriever(index_dir, kind="np", beam=1, memory_weight=1e4, past_beam="none").search(QUERIES, 1)
    assert {q: next(iter(docs)) for q, docs in run.items()} == _best_by_memory(index_dir, t5_dir)


def test_weight_zero_is_plain_decoding_and_genre_refuses_a_weight(index_dir):
    plain = GenerativeRetriever(index_dir, kind="np", beam=3).search(QUERIES, 5)
    zero = GenerativeRetriever(index_dir, kind="np", beam=3, memory_weight=0.0)
    assert zero.memory is None and zero.search(QUERIES, 5) == plain
    with pytest.raises(NpdecodeError, match="only the np retriever"):
        GenerativeRetriever(index_dir, kind="genre", memory_weight=1.0)
    with pytest.raises(NpdecodeError):
        GenerativeRetriever(index_dir, kind="np", memory_weight=-1.0)


def test_the_checkpoint_carries_its_memory_weight(index_dir, tmp_path):
    model = GenerativeRetriever(index_dir, kind="np").model
    model.memory_weight = 7.5
    ckpt = save_model(model, tmp_path / "ckpt")
    assert load_model(ckpt).memory_weight == 7.5
    by_default = GenerativeRetriever(index_dir, kind="np", gr_model=str(ckpt))
    assert by_default.memory is not None and by_default.memory.weight == 7.5
    assert GenerativeRetriever(index_dir, kind="np", gr_model=str(ckpt), memory_weight=0.0).memory is None
    assert ModelConfig().memory_weight == 0.0 and ModelConfig(memory_weight=3).memory_weight == 3.0
    with pytest.raises(ValueError):
        ModelConfig(memory_weight=-1)
