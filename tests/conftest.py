"""Session-scoped tiny random backbones (built offline once per test session).

Fixtures: ``t5_dir`` (original T5 layout, tied), ``t5_gated_dir`` (v1.1/flan layout, separate
lm_head), ``bart_dir``, ``bert2bert_dir``; ``backbone_dir`` is parametrized over all four.
"""

from __future__ import annotations

import pytest

from tests.tiny_models import BUILDERS


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """Tiny models on a shared small CPU run faster single-threaded (no thread contention)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _build(tmp_path_factory: pytest.TempPathFactory, kind: str):
    return BUILDERS[kind](tmp_path_factory.mktemp("models") / kind)


@pytest.fixture(scope="session")
def t5_dir(tmp_path_factory):
    return _build(tmp_path_factory, "t5")


@pytest.fixture(scope="session")
def t5_gated_dir(tmp_path_factory):
    return _build(tmp_path_factory, "t5_gated")


@pytest.fixture(scope="session")
def bart_dir(tmp_path_factory):
    return _build(tmp_path_factory, "bart")


@pytest.fixture(scope="session")
def bert2bert_dir(tmp_path_factory):
    return _build(tmp_path_factory, "bert2bert")


@pytest.fixture(scope="session", params=sorted(BUILDERS))
def backbone_dir(request):
    """Every backbone family in turn (t5, t5_gated, bart, bert2bert)."""
    return request.getfixturevalue(f"{request.param.replace('_dir', '')}_dir")
