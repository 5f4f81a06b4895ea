"""The segments of a run: the first process that trained it and one per ``--resume``.

Each checkpoint carries the segments so far (the current one up to its step), so a resumed run
knows what came before it, and the manifest's steps, seconds and examples are those of the whole
run. A segment is ``{"start_step", "end_step", "seconds", "examples"}``: it starts at the global
step of the checkpoint it resumed from and ends at the step of the last checkpoint it wrote (the
last segment: where training ended), so the segments tile ``0 .. steps``. Work a crash threw away
after the last checkpoint is in no segment: the resume did it again, and counts it once.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytorch_lightning as pl

KEY = "npdecode_segments"


class RunClock(pl.Callback):
    """Times the current segment (wall clock from construction, so it also spans the child
    processes of a ddp_spawn run) and writes every segment so far into each checkpoint.

    ``earlier``: the segments of the checkpoint resumed from, ``start_step`` its global step
    (``[]`` and 0 for a run from the start); ``examples_per_step``: the examples one optimizer step
    consumes over all processes (the last, short batch of an epoch counts full)."""

    def __init__(self, earlier: list[dict], start_step: int, examples_per_step: int) -> None:
        self.earlier, self.start_step, self.per_step = [dict(s) for s in earlier], start_step, examples_per_step
        self.started, self.stopped = time.time(), None

    def stop(self) -> None:
        """The segment's time ends now (the fit returned), not when the manifest is written."""
        self.stopped = time.time()

    def segments(self, end_step: int) -> list[dict]:
        """The earlier segments and the current one up to ``end_step``."""
        seconds = (self.stopped or time.time()) - self.started
        current = {
            "start_step": self.start_step,
            "end_step": end_step,
            "seconds": round(seconds, 3),
            "examples": max(0, end_step - self.start_step) * self.per_step,
        }
        return [*self.earlier, current]

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        checkpoint[KEY] = self.segments(int(trainer.global_step))


def resume_point(ckpt: Path | None) -> tuple[int, list[dict]]:
    """The global step and the segments of the checkpoint a run resumes from; ``(0, [])`` for
    none. A checkpoint written before segments were recorded gives one segment of unknown time
    (``seconds`` 0) up to its step."""
    if ckpt is None:
        return 0, []
    import torch

    saved = torch.load(ckpt, map_location="cpu", weights_only=False, mmap=True)  # mmap: no tensor is read
    step = int(saved["global_step"])
    earlier = saved.get(KEY)
    if earlier is None:
        earlier = [{"start_step": 0, "end_step": step, "seconds": 0.0, "examples": 0}] if step else []
    return step, list(earlier)


def totals(segments: list[dict]) -> dict:
    """Seconds, examples and examples per second of the whole run: sums over its segments."""
    seconds = round(sum(s["seconds"] for s in segments), 3)
    examples = sum(s["examples"] for s in segments)
    return {"seconds": seconds, "examples": examples, "examples_per_second": round(examples / max(seconds, 1e-9), 1)}
