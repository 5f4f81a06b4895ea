"""``benchmarks/gpu_train.sh`` end to end on a CPU with a tiny model and a toy BEIR folder: it
trains, evaluates np beside BM25 and writes its table and JSON (the GPU run uses the same script)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.train.helpers import fast_config, toy_beir, write_config

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_recipe_script_runs_on_cpu_with_a_tiny_config(t5_dir, tmp_path):
    toy = toy_beir(tmp_path / "beir")
    config = write_config(  # the GPU config's variant: np with the CE table trained
        tmp_path / "tiny.yml",
        fast_config(t5_dir, toy, model={"train_ce": True}, trainer={"max_epochs": 2, "max_steps": -1}),
    )
    env = {
        **os.environ,
        "PY": sys.executable,
        "CONFIG": str(config),
        "DATASET": str(toy),
        "MINUTES": "0.5",
        "RUN": str(tmp_path / "run"),
        "OUT": str(tmp_path / "out"),
        "SETS": "optim.lr=0.01 trainer.threads=1",
    }
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_train.sh")],
        env=env,
        capture_output=True,
        check=False,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((tmp_path / "out" / "scifact_gr_gpu.json").read_text())
    assert set(result["retrievers"]) == {"bm25", "np"}
    assert 0.0 <= result["retrievers"]["np"]["metrics"]["ndcg_cut_10"] <= 1.0
    table = (tmp_path / "out" / "scifact_gr_gpu.txt").read_text()
    assert "wall: train+index" in table and "np" in table
    run = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert run["config"]["optim"]["lr"] == 0.01 and run["config"]["trainer"]["max_minutes"] == 0.5
    assert run["config"]["model"]["train_ce"] is True
