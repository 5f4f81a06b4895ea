"""The decoder start and EOS CE rows differ for every backbone family, so training can make the
EOS step certain (equal rows tie their logits: p(EOS) <= 0.5, a log 2 floor on the loss)."""

from __future__ import annotations

import pytest
import torch

from npdecode.index.builder import build_index
from npdecode.index.layout import load_index
from npdecode.train.components import build_model, targets_of
from npdecode.train.module import GRModule
from tests.index.helpers import fast_config as fast_index_config
from tests.index.helpers import toy_corpus_file
from tests.train.helpers import fast_config, load
from tests.train.test_module import _batch


# logit scale and rate per family: the tiny bert2bert's CE rows all have norm sqrt(d) (LayerNorm)
@pytest.mark.parametrize(("family", "scale", "lr"), [("t5", 1.0, 1e-2), ("bart", 1.0, 1e-2), ("bert2bert", 0.3, 3e-3)])
def test_start_and_eos_rows_differ_and_training_makes_eos_certain(request, family, scale, lr, tmp_path):
    backbone_dir = request.getfixturevalue(f"{family}_dir")
    index = load_index(
        build_index(toy_corpus_file(tmp_path, 6, seed=3), backbone_dir, tmp_path / "idx", fast_index_config())
    )
    assert index.token_ids[index.bos_ce] != index.token_ids[index.eos_ce]
    assert not torch.allclose(
        torch.from_numpy(index.vectors[index.bos_ce]), torch.from_numpy(index.vectors[index.eos_ce])
    )
    config = load(fast_config(backbone_dir, tmp_path, model={"logit_scale": scale, "learn_scale": True}))
    module = GRModule(build_model(config, str(backbone_dir), index), config)
    model = module.model
    texts = [index.groups[g].identifier for g in range(3)]
    batch = _batch(model, index, texts, [0, 1, 2])
    module.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    for _ in range(200):
        optimizer.zero_grad()
        module.loss(batch).backward()
        optimizer.step()
    module.eval()
    with torch.no_grad():
        logits = model(batch["input_ids"], batch["attention_mask"], batch["decoder_input_ids"])  # (B, L, V)
        probs = logits.float().softmax(-1)
    for row, target in enumerate(targets_of(index, "np")[:3]):
        end = len(target) - 1  # the position whose label is EOS
        assert batch["labels"][row, end] == index.eos_ce
        assert float(probs[row, end, index.eos_ce]) > 0.99, (family, row, float(probs[row, end, index.eos_ce]))
