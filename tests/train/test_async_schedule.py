"""``ce_encoder: async``: the epochs whose start rebuilds the CE table, for several
``model.async_every_n_epochs`` (epoch 0 trains on the run's index; then every n-th epoch)."""

from __future__ import annotations

import csv
from types import SimpleNamespace

import pytest
import torch

from npdecode.train.async_ce import AsyncCE
from npdecode.train.run import train_run
from tests.train.helpers import fast_config, load, toy_beir


def _rebuilt_epochs(every: int, epochs: int, ce_epoch: int = 0, first: int = 0) -> list[int]:
    """The epochs ``first .. epochs-1`` at whose start the callback rebuilds (the rebuild itself
    stubbed: it records its epoch in the module, as ``GRModule.replace_ce`` does)."""
    callback = AsyncCE(rebuilder=None, every_n_epochs=every)
    module, done = SimpleNamespace(ce_epoch=torch.tensor(ce_epoch)), []

    def refresh(trainer, module, epoch):
        done.append(epoch)
        module.ce_epoch = torch.tensor(epoch)

    callback.refresh = refresh
    for epoch in range(first, epochs):
        callback.on_train_epoch_start(SimpleNamespace(current_epoch=epoch), module)
    return done


@pytest.mark.parametrize(
    ("every", "expected"),
    [(1, [1, 2, 3, 4, 5]), (2, [2, 4]), (3, [3]), (4, [4]), (6, [])],
)
def test_rebuilds_start_every_nth_epoch_over_six_epochs(every, expected):
    assert _rebuilt_epochs(every, epochs=6) == expected


def test_a_resumed_run_does_not_rebuild_an_epochs_table_twice():
    """Killed after the rebuild at the start of epoch 2 (the checkpoint's table is of epoch 2):
    the resume starts epoch 2 again without a rebuild; epoch 4 rebuilds."""
    assert _rebuilt_epochs(2, epochs=6, ce_epoch=2, first=2) == [4]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return toy_beir(tmp_path_factory.mktemp("toy") / "beir")


def test_a_run_rebuilds_at_the_epochs_of_its_schedule(t5_dir, toy, tmp_path):
    """Through Lightning's loop: async_every_n_epochs=2 over 5 epochs rebuilds at epochs 2 and 4
    (the logged async rows and the run's messages)."""
    config = fast_config(
        t5_dir,
        toy,
        model={"ce_encoder": "async", "async_every_n_epochs": 2},
        data={"batch_size": 64},  # one batch per epoch
        trainer={"max_epochs": 5, "max_steps": -1},
        validation={"queries": 0},
    )
    messages: list[str] = []
    train_run(load(config), tmp_path / "run", say=messages.append)
    with open(tmp_path / "run" / "logs" / "csv" / "metrics.csv", encoding="utf-8") as fh:
        logged = [int(r["epoch"]) for r in csv.DictReader(fh) if r.get("async/targets_changed")]
    assert logged == [2, 4]
    assert [m.split("rebuilt at epoch ")[1].split(":")[0] for m in messages if "rebuilt at epoch" in m] == ["2", "4"]
