"""A run killed mid-epoch and resumed: its logs keep the part before the crash (each step once),
its manifest counts the whole run segment by segment, and with dropout and sampled negatives on
(both draw from the global RNG, restored from the checkpoint) it ends with the weights of a run
that was never interrupted.

One pair of runs serves every test: 3 epochs of 7 steps, validation (so a checkpoint) at each
epoch's end; the cut run dies at the start of step 10, three steps after its checkpoint of step 7.
"""

from __future__ import annotations

import csv
import json
import shutil
import struct
import warnings
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch

from npdecode.model import load_model
from npdecode.train.logs import ResumedCSVWriter
from npdecode.train.run import train_run
from tests.tiny_models import build_t5
from tests.train.helpers import fast_config, load, toy_beir

STEPS, CHECKPOINT, CRASH = 21, 7, 10  # 3 epochs x 7 batches; last.ckpt of epoch 0; killed before step 10


class Crash(pl.Callback):
    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step == CRASH:
            raise RuntimeError("killed")


def _with_dropout(backbone: Path, rate: float) -> Path:
    cfg = json.loads((backbone / "config.json").read_text())
    cfg["dropout_rate"] = rate
    (backbone / "config.json").write_text(json.dumps(cfg))
    return backbone


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    import npdecode.train.trainer as trainer_mod

    root = tmp_path_factory.mktemp("resume")
    toy = toy_beir(root / "beir")
    backbone = _with_dropout(build_t5(root / "t5"), 0.1)  # the shared tiny models have no dropout
    config = load(
        fast_config(backbone, toy, model={"sampled_negatives": 3}, trainer={"max_epochs": 3, "max_steps": -1})
    )
    whole = train_run(config, root / "whole")
    make = trainer_mod.make_trainer

    def crashing(*args, **kwargs):
        trainer, ckpt = make(*args, **kwargs)
        trainer.callbacks.append(Crash())
        return trainer, ckpt

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trainer_mod, "make_trainer", crashing)
        with pytest.raises(RuntimeError, match="killed"):
            train_run(config, root / "cut")
    shutil.copytree(root / "cut" / "logs", root / "before")  # the logs as the crash left them
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed = train_run(config, root / "cut", resume=True)
    return SimpleNamespace(root=root, whole=whole, resumed=resumed, warnings=[str(w.message) for w in caught])


def _rows(path: Path) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as fh:
        return [{k: v for k, v in row.items() if v != ""} for row in csv.DictReader(fh)]


def test_csv_keeps_the_interrupted_part_and_each_logged_step_once(runs):
    before = _rows(runs.root / "before" / "csv" / "metrics.csv")
    after = _rows(runs.root / "cut" / "logs" / "csv" / "metrics.csv")
    whole = _rows(runs.root / "whole" / "logs" / "csv" / "metrics.csv")
    assert [int(r["step"]) for r in before if "loss" in r] == list(range(CRASH))  # 8, 9: after the checkpoint
    assert Counter(int(r["step"]) for r in after if "loss" in r) == Counter(range(STEPS))  # each step once
    assert [r for r in after if int(r["step"]) < CHECKPOINT] == [r for r in before if int(r["step"]) < CHECKPOINT]
    shape = [(r["step"], sorted(r)) for r in after]
    assert shape == [(r["step"], sorted(r)) for r in whole]  # the rows and columns of an uninterrupted run
    assert not any("will be deleted" in w for w in runs.warnings)


def test_csv_writer_keeps_rows_before_the_resume_step_and_widens_the_header(tmp_path):
    log_dir = tmp_path / "csv"
    log_dir.mkdir()
    rows = [{"epoch": 0, "loss": 1.0 + s, "step": s} for s in range(6)]
    rows[5]["val/x"] = 0.5  # a column only a dropped row (step 5) filled
    with open(log_dir / "metrics.csv", "w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["epoch", "loss", "step", "val/x"])
        writer.writeheader()
        writer.writerows(rows)
    writer = ResumedCSVWriter(str(log_dir), resume_step=4)
    assert (log_dir / "metrics.csv").read_text().splitlines()[0] == "epoch,loss,step"  # val/x went with step 5
    writer.log_metrics({"loss": 9.0, "lr": 0.1}, step=4)  # the resumed part logs a new column
    writer.save()
    got = _rows(log_dir / "metrics.csv")
    assert [int(r["step"]) for r in got] == [0, 1, 2, 3, 4]
    assert got[0] == {"epoch": "0", "loss": "1.0", "step": "0"} and got[4] == {"loss": "9.0", "lr": "0.1", "step": "4"}
    with open(log_dir / "metrics.csv", encoding="utf-8") as fh:
        assert next(csv.reader(fh)) == ["epoch", "loss", "lr", "step"]


def _events(path: Path) -> list:
    """The events of a TensorBoard event file (records: length, its crc, data, its crc)."""
    from tensorboardX.proto.event_pb2 import Event

    data, out, at = path.read_bytes(), [], 0
    while at < len(data):
        (length,) = struct.unpack("<Q", data[at : at + 8])
        out.append(Event.FromString(data[at + 12 : at + 12 + length]))
        at += 12 + length + 4
    return out


def _scalar_steps(events: list, tag: str) -> list[int]:
    return [e.step for e in events if e.HasField("summary") and any(v.tag == tag for v in e.summary.value)]


def test_tensorboard_keeps_the_first_segments_event_file_and_purges_the_redone_steps(runs):
    first = sorted((runs.root / "before" / "tensorboard").glob("events.*"))
    files = sorted((runs.root / "cut" / "logs" / "tensorboard").glob("events.*"))
    assert len(first) == 1 and len(files) == 2
    kept = runs.root / "cut" / "logs" / "tensorboard" / first[0].name
    assert kept.read_bytes() == first[0].read_bytes()  # the resume left it as it was
    assert _scalar_steps(_events(kept), "loss") == list(range(CRASH))
    later = _events(next(p for p in files if p.name != first[0].name))
    start = next(e for e in later if e.HasField("session_log"))
    assert start.step == CHECKPOINT  # TensorBoard hides the earlier file's events of steps >= 7
    read = [s for s in _scalar_steps(_events(kept), "loss") if s < start.step] + _scalar_steps(later, "loss")
    assert read == list(range(STEPS))


def test_manifest_counts_the_whole_run_segment_by_segment(runs):
    training, whole = runs.resumed["training"], runs.whole["training"]
    segments = training["segments"]
    assert [(s["start_step"], s["end_step"]) for s in segments] == [(0, CHECKPOINT), (CHECKPOINT, STEPS)]
    assert training["steps"] == sum(s["end_step"] - s["start_step"] for s in segments) == whole["steps"] == STEPS
    assert training["examples"] == sum(s["examples"] for s in segments) == whole["examples"] == STEPS * 8
    assert segments[0]["examples"] == CHECKPOINT * 8 and segments[0]["seconds"] > 0
    assert training["seconds"] == pytest.approx(sum(s["seconds"] for s in segments), abs=1e-3)
    assert training["seconds"] > segments[-1]["seconds"]  # not the last fragment alone
    assert training["examples_per_second"] == pytest.approx(training["examples"] / training["seconds"], rel=1e-2)
    assert [(s["start_step"], s["end_step"]) for s in whole["segments"]] == [(0, STEPS)]


def test_resumed_run_with_dropout_and_sampled_negatives_equals_the_uninterrupted_one(runs):
    """Fails if the global RNG is not restored from the checkpoint: the resumed part would draw
    other dropout masks and other negatives."""
    a = load_model(runs.root / "whole" / "checkpoint").state_dict()
    b = load_model(runs.root / "cut" / "checkpoint").state_dict()
    assert load_model(runs.root / "whole" / "checkpoint").backbone.model.config.dropout_rate == 0.1
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
