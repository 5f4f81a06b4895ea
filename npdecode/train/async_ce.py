"""``ce_encoder: async``: the CE table is rebuilt from the model's own encoder while it trains.

Every ``model.async_every_n_epochs`` epochs, at the start of an epoch, the callback re-encodes
the corpus with the encoder as it is now (in memory: :class:`~npdecode.index.builder.CERebuilder`,
the same batches and clustering as ``npdecode index``), swaps the new CE table and document
targets into the module (:meth:`GRModule.replace_ce`), points the training data and the
validation trie at the new targets, and logs how many documents' targets changed.

The table, its token ids and the documents' CE ids are module state (parameters and buffers),
so a checkpoint, the best-model selection and a ddp_spawn run all carry the table that goes
with their weights; the run's final index is written from that state (:func:`write_final_index`).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pytorch_lightning as pl
import torch

log = logging.getLogger(__name__)


class AsyncCE(pl.Callback):
    """Rebuilds CE, clustering, trie and targets every ``every_n_epochs`` epochs (epoch 0 trains
    on the run's index). ``rebuilder`` is a :class:`~npdecode.index.builder.CERebuilder` of the
    run's corpus."""

    def __init__(self, rebuilder, every_n_epochs: int = 1, say=None) -> None:
        self.rebuilder, self.every = rebuilder, every_n_epochs
        self.say = say or log.info
        self.history: list[dict] = []

    def on_train_start(self, trainer: pl.Trainer, module) -> None:
        apply_targets(trainer.datamodule, module)  # a resumed run continues with its saved table

    def on_train_epoch_start(self, trainer: pl.Trainer, module) -> None:
        epoch = trainer.current_epoch
        if epoch == 0 or epoch % self.every or int(module.ce_epoch) == epoch:
            return
        self.refresh(trainer, module, epoch)

    def refresh(self, trainer: pl.Trainer, module, epoch: int) -> int:
        """Rebuild now; returns how many documents' targets changed."""
        before = module.targets()
        rows, row_tokens, records, _ = self.rebuilder.rebuild(
            module.model.backbone, trainer.global_rank, trainer.world_size
        )
        group_ce = torch.tensor([c for r in records for c in r.ce], dtype=torch.long)
        module.replace_ce(torch.from_numpy(rows), torch.from_numpy(row_tokens), group_ce, epoch)
        after = module.targets()
        changed = sum(a != b for a, b in zip(before, after))
        apply_targets(trainer.datamodule, module)
        module.log("async/targets_changed", float(changed), on_epoch=True, batch_size=1)
        module.log("async/ce_rows", float(len(rows)), on_epoch=True, batch_size=1)
        self.history.append({"epoch": epoch, "targets_changed": changed, "ce_rows": len(rows)})
        if trainer.global_rank == 0:
            self.say(
                f"async CE: rebuilt at epoch {epoch}: {len(rows)} rows, targets of {changed} of "
                f"{len(after)} identifiers changed"
            )
        return changed


def apply_targets(datamodule, module) -> None:
    """Training examples and the validation trie follow the module's current CE ids."""
    from npdecode.trie import build_trie

    targets = module.targets()
    if datamodule is not None:
        datamodule.examples.targets = targets
    if module.validator is not None:
        module.validator.trie = build_trie(targets, list(range(len(targets))), id_space="ce")


def write_final_index(module, rebuilder, index_dir: Path, checkpoint_dir: Path) -> None:
    """Replace the run's index with the table and targets the (selected) model trained with.

    The old index stays in place until the new one is complete."""
    from npdecode.index.assembly import make_records
    from npdecode.index.builder import write_index

    model = module.model
    records = make_records(rebuilder.groups, rebuilder.ident_tokens, module.group_ce.cpu().numpy())
    segment = (model.ce.detach().float().cpu().numpy(), model.ce_token_ids.cpu().numpy(), records, None)
    index_dir = Path(index_dir)
    fresh, old = index_dir.parent / f".{index_dir.name}.async", index_dir.parent / f".{index_dir.name}.old"
    write_index(
        fresh,
        segment,
        rebuilder.config,
        corpus=rebuilder.corpus,
        model_ref=str(Path(checkpoint_dir).resolve()),
        model_digest=None,
        family=model.backbone.family,
        groups=rebuilder.groups,
        ident_tokens=rebuilder.ident_tokens,
        empty=rebuilder.empty,
    )
    shutil.rmtree(old, ignore_errors=True)
    os.replace(index_dir, old)
    os.replace(fresh, index_dir)
    shutil.rmtree(old, ignore_errors=True)
