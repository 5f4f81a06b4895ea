"""Training flushes float denormals to zero, on every intra-op thread (they slow CPU ops ~100x)."""

from __future__ import annotations

import subprocess
import sys

from npdecode.train.run import train_run
from tests.train.helpers import fast_config, load, toy_beir

# a denormal float32 times 1.0 over a tensor large enough for torch to split the op over threads
PROBE = (
    "import torch\n"
    "{setup}"
    "torch.set_num_threads(2)\n"
    "x = torch.full((1 << 22,), 2.0 ** -140)\n"
    "y = x * 1.0\n"
    "print(int((y != 0).sum()), int((y[: len(y) // 2] != 0).sum()), int((y[len(y) // 2 :] != 0).sum()))\n"
)


def _nonzero(setup: str) -> list[int]:
    out = subprocess.run([sys.executable, "-c", PROBE.format(setup=setup)], capture_output=True, text=True, check=True)
    return [int(v) for v in out.stdout.split()]


def test_flush_denormals_reaches_every_intra_op_thread():
    assert _nonzero("")[0] > 0  # the control: without it, denormals survive the op
    assert _nonzero("from npdecode.device import flush_denormals\nflush_denormals()\n") == [0, 0, 0]


def test_training_entry_points_flush_denormals(t5_dir, tmp_path, monkeypatch):
    import npdecode.device

    calls = []
    monkeypatch.setattr(npdecode.device, "flush_denormals", lambda: calls.append(1))
    toy = toy_beir(tmp_path / "beir")
    train_run(load(fast_config(t5_dir, toy, trainer={"fast_dev_run": True})), tmp_path / "run")
    assert len(calls) >= 2  # the launching process, and the module's setup (each process of a run)
