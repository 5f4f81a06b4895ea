"""Serve tests: a tiny random T5 index dir (one per test module: appends change it)."""

from __future__ import annotations

import pytest

from npdecode.index.builder import build_index
from tests.index.helpers import fast_config, write_jsonl
from tests.tiny_models import toy_corpus

N_DOCS = 20
TOKEN = "serve-test-token-0123456789"


@pytest.fixture(scope="module")
def index_dir(t5_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    corpus = write_jsonl(toy_corpus(N_DOCS, seed=7), root / "corpus.jsonl")
    return build_index(corpus, t5_dir, root / "index", fast_config())


@pytest.fixture(scope="module")
def token_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("token") / "token.txt"
    path.write_text(TOKEN + "\n")
    return path
