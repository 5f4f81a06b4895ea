"""The Lightning ``Trainer`` of a run, from the config: placement, precision, budget, checkpoints, logs."""

from __future__ import annotations

import contextlib
import datetime
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint, TQDMProgressBar

from npdecode.index.builder import resolve_strategy  # same fields: strategy, devices, num_nodes
from npdecode.train.config import TrainConfig
from npdecode.train.logs import run_loggers


def resolve_precision(config: TrainConfig) -> str:
    """``auto``: bf16-mixed on a CUDA device with bf16 support, 32-true elsewhere."""
    t = config.trainer
    if t.precision != "auto":
        return t.precision
    import torch

    if t.accelerator != "cpu" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


@contextlib.contextmanager
def quiet_fit(config: TrainConfig) -> Iterator[None]:
    """The index stage's quiet Lightning, and its warnings about what is so by design off: few
    dataloader workers (batches are tensors already), a frozen encoder left in eval mode."""
    from npdecode.index.extraction import quiet_lightning

    with quiet_lightning(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*have no `validation_step`.*")  # contrastive stage 1
        if config.model.freeze_encoder or config.model.train_encoder_layers is not None:
            warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")
        yield


def make_trainer(
    config: TrainConfig, out: Path, *, has_validation: bool, callbacks: list | None = None, resume_step: int = 0
) -> tuple[pl.Trainer, ModelCheckpoint]:
    """The Trainer and its checkpoint callback (best on the validation metric, and last), with
    the run's own ``callbacks`` (e.g. the async CE rebuild) before it. ``resume_step``: the
    global step of the checkpoint the fit resumes from; the logs under ``out/logs`` keep what
    was logged before it (:mod:`npdecode.train.logs`)."""
    t, v = config.trainer, config.validation
    monitor = f"val/{v.metric}" if has_validation else None
    if has_validation:
        checkpoint = ModelCheckpoint(
            dirpath=out / "lightning",
            filename="best",
            monitor=monitor,
            mode="max",
            save_top_k=1,
            save_last=True,
            enable_version_counter=False,
        )
    else:  # no metric to select on: last.ckpt only, written at each epoch's end (Lightning writes
        # "last" only beside a top-k save, so the one top-k file is named last)
        checkpoint = ModelCheckpoint(
            dirpath=out / "lightning",
            filename="last",
            monitor=None,
            save_top_k=1,
            save_last=False,
            enable_version_counter=False,
            save_on_train_epoch_end=True,
        )
    callbacks = [*(callbacks or []), checkpoint]
    if has_validation and v.patience is not None:
        callbacks.append(EarlyStopping(monitor=monitor, mode="max", patience=v.patience))
    if t.progress:
        callbacks.append(TQDMProgressBar(refresh_rate=max(1, t.log_every_n_steps // 2)))
    loggers = run_loggers(out / "logs", resume_step)
    max_time = datetime.timedelta(minutes=t.max_minutes) if t.max_minutes else None
    trainer = pl.Trainer(
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=resolve_strategy(config.trainer),
        precision=resolve_precision(config),
        max_epochs=t.max_epochs if t.max_epochs is not None else -1,
        max_steps=t.max_steps,
        max_time=max_time,
        gradient_clip_val=config.optim.grad_clip,
        accumulate_grad_batches=config.optim.accumulate,
        check_val_every_n_epoch=v.every_n_epochs,
        limit_val_batches=1.0 if has_validation else 0,
        num_sanity_val_steps=0,
        log_every_n_steps=t.log_every_n_steps,
        callbacks=callbacks,
        logger=loggers,
        enable_progress_bar=t.progress,
        enable_model_summary=False,
        use_distributed_sampler=False,
        default_root_dir=out,
        fast_dev_run=t.fast_dev_run,
    )
    return trainer, checkpoint
