"""The loggers of a run (``logs/csv/metrics.csv`` and ``logs/tensorboard/``), which a resume continues.

Lightning's CSV writer deletes ``metrics.csv`` when its folder is not empty, so a resumed run
would lose the history of the part before the crash. Here a resume from a checkpoint of global
step ``S`` keeps every row logged at a step ``< S`` (what the checkpoint holds) and drops the
rows of steps ``>= S``: the crashed process logged them after its last checkpoint and the resume
logs them again, so each step is in the file once. TensorBoard gets a new event file in the same
folder, the earlier ones stay, and its ``purge_step`` hides their events of steps ``>= S``.

Lightning logs a row at the step counter of the moment: a training step ``k`` (0-based) at ``k``,
the epoch-end and validation rows of an epoch that ends at global step ``S`` at ``S - 1``.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.loggers.logger import rank_zero_experiment


class ResumedCSVWriter(ExperimentWriter):
    """Lightning's CSV writer that keeps the rows of an existing ``metrics.csv`` logged before
    ``resume_step`` (and appends after them) instead of deleting the file.

    The header is that of the kept rows (columns only later rows filled are dropped); a column
    the resumed part adds makes Lightning rewrite the file with the wider header, as always."""

    def __init__(self, log_dir: str, resume_step: int) -> None:
        self.resume_step = resume_step
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:  # Lightning's warns, then deletes metrics.csv
        path = Path(self.metrics_file_path)
        if not path.is_file():
            return
        with open(path, encoding="utf-8", newline="") as fh:
            kept = [row for row in csv.DictReader(fh) if _step(row) < self.resume_step]
        if not kept:
            path.unlink()
            return
        self.metrics_keys = sorted({k for row in kept for k, v in row.items() if k and v not in ("", None)})
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=self.metrics_keys, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(kept)
        os.replace(tmp, path)  # a crash while trimming leaves the old file, never half of it


class ResumedCSVLogger(CSVLogger):
    """``CSVLogger`` whose writer is a :class:`ResumedCSVWriter` (``resume_step`` 0: a fresh file)."""

    def __init__(self, save_dir: str | Path, name: str, *, resume_step: int = 0) -> None:
        super().__init__(save_dir, name=name, version="")
        self.resume_step = resume_step

    @property
    @rank_zero_experiment
    def experiment(self) -> ResumedCSVWriter:
        if self._experiment is None:  # as Lightning's, with the resuming writer
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = ResumedCSVWriter(self.log_dir, self.resume_step)
        return self._experiment


def _step(row: dict) -> int:
    value = row.get("step") or "0"
    return int(float(value))


def run_loggers(logs: Path, resume_step: int = 0) -> list:
    """The CSV and TensorBoard loggers of a run whose logs live in ``logs``, continuing a run
    resumed from a checkpoint of global step ``resume_step`` (0: from the start)."""
    tensorboard = logs / "tensorboard"
    earlier = tensorboard.is_dir() and any(tensorboard.glob("events.*"))
    return [
        ResumedCSVLogger(logs, "csv", resume_step=resume_step),
        TensorBoardLogger(
            logs,
            name="tensorboard",
            version="",
            default_hp_metric=False,
            # TensorBoard hides the earlier files' events from this step on (the resume redoes them)
            purge_step=resume_step if earlier else None,
            # event files are named by the second and host: a quick resume must not overwrite one
            filename_suffix=f".step{resume_step}.{os.getpid()}",
        ),
    ]
