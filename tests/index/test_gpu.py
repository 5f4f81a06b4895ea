"""GPU checks (run with `pytest -m gpu` on a CUDA machine): bf16 extraction, store on the GPU."""

from __future__ import annotations

import numpy as np
import pytest

from npdecode.index.builder import build_index
from npdecode.index.layout import load_index
from npdecode.index.store import load_store
from npdecode.search.retrievers.generative import GenerativeRetriever
from tests.index.helpers import fast_config, write_jsonl
from tests.tiny_models import toy_corpus

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _needs_cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")


def test_bf16_gpu_index_matches_fp32_cpu_index(t5_dir, tmp_path):
    corpus = write_jsonl(toy_corpus(20, seed=1), tmp_path / "c.jsonl")
    build_index(corpus, t5_dir, tmp_path / "cpu", fast_config(k=0, precision="32"))
    build_index(corpus, t5_dir, tmp_path / "gpu", fast_config(k=0, accelerator="gpu", precision="auto"))
    cpu, gpu = load_index(tmp_path / "cpu"), load_index(tmp_path / "gpu")
    assert [g.ce for g in cpu.groups] == [g.ce for g in gpu.groups]
    cos = (cpu.vectors * gpu.vectors).sum(1) / (
        np.linalg.norm(cpu.vectors, axis=1) * np.linalg.norm(gpu.vectors, axis=1)
    )
    assert cos.min() > 0.99  # bf16 autocast: close to fp32, not equal
    store = load_store(gpu.store_path(), device="cuda")
    _, ids = store.search(gpu.vectors[:8], 1)
    assert ids[:, 0].tolist() == np.argmax(gpu.vectors[:8] @ gpu.vectors.T, axis=1).tolist()
    run = GenerativeRetriever(tmp_path / "gpu", device="cuda", beam=4).search({"q": "alpha"}, k=4)
    assert len(run["q"]) == 4
