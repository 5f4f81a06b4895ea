"""Bounded memory: the executor holds a few tensors per input, never a whole model.

Measured by instrumenting the readers (every tensor they hand out is tracked with a weak
reference until it is freed), not by timing or RSS.
"""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

from npdecode.merge import tensor_io
from npdecode.merge.api import merge_models
from tests.merge.helpers import read_tensors


class _Tracker:
    def __init__(self):
        self.alive: dict[int, int] = {}  # id(reader) -> live tensors handed out
        self.peak: dict[int, int] = {}
        self.total = 0

    def wrap(self, cls, monkeypatch):
        real = cls.get

        def get(reader, name):
            tensor = real(reader, name)
            key = id(reader)
            self.alive[key] = self.alive.get(key, 0) + 1
            self.peak[key] = max(self.peak.get(key, 0), self.alive[key])
            self.total += 1
            out = tensor.view(tensor.shape)  # a fresh object to watch (shares the storage)
            weakref.finalize(out, self._release, key)
            return out

        monkeypatch.setattr(cls, "get", get)

    def _release(self, key):
        self.alive[key] -= 1


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_executor_holds_few_tensors_per_input(fmt, threads, checkpoints, tmp_path, monkeypatch):
    a, b, c = (checkpoints("t5v11", s, fmt) for s in (0, 1, 2))
    tracker = _Tracker()
    tracker.wrap(tensor_io.SafetensorsReader if fmt == "safetensors" else tensor_io.TorchBinReader, monkeypatch)
    recipe = {"merge_method": "linear", "base_model": str(a),
              "models": [{"model": str(m), "parameters": {"weight": 1}} for m in (a, b, c)]}  # fmt: skip
    report = merge_models(recipe, tmp_path / "out", threads=threads)
    gc.collect()
    assert tracker.total >= 3 * report.tensors  # every input tensor was read ...
    assert len(tracker.peak) == 3
    # ... but never more than one per worker thread per input at a time (base = models[0] read once)
    assert max(tracker.peak.values()) <= threads
    assert all(v == 0 for v in tracker.alive.values())


def test_threads_give_identical_output(checkpoints, tmp_path):
    a, b = checkpoints("bart", 0), checkpoints("bart", 1)
    recipe = {"merge_method": "linear", "models": [{"model": str(m), "parameters": {"weight": 1}} for m in (a, b)]}
    merge_models(recipe, tmp_path / "one", threads=1)
    merge_models(recipe, tmp_path / "four", threads=4, out_shard_size=10_000)
    one, four = read_tensors(tmp_path / "one"), read_tensors(tmp_path / "four")
    assert one.keys() == four.keys() and all(torch.equal(one[k], four[k]) for k in one)


def test_reader_is_zero_copy_and_impure_methods_are_refused(checkpoints, tmp_path, monkeypatch):
    """Inputs are views of the mapped files; a method writing into them is a loud error,
    and the file (and later reads) never see the write."""
    from npdecode.merge import plan as plan_module
    from npdecode.merge.registry import MergeMethod

    a = checkpoints("llama", 0)
    reader = tensor_io.open_model_dir("a", a).reader
    name = "model.layers.0.mlp.up_proj.weight"
    before = reader.get(name).clone()

    def impure(tensors, base, model_params, params, generator):
        return tensors[0].mul_(2)

    bad = MergeMethod(name="impure", func=impure)
    monkeypatch.setattr(plan_module, "get_method", lambda _name: bad)
    monkeypatch.setattr(plan_module, "_probe_methods", lambda tasks: None)
    with pytest.raises(RuntimeError, match="wrote into its input tensors"):
        merge_models({"merge_method": "impure", "models": [{"model": str(a)}]}, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    gc.collect()
    assert torch.equal(tensor_io.open_model_dir("a", a).reader.get(name), before)
