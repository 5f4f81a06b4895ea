"""``ce_encoder: contrastive``: stage 1 puts the query side and the CE in one space.

Stage 1 trains the encoder and decoder so that the *first decoder state* of a training example
(query, document text or pseudo-query; the decoder fed only the start row) scores the CE rows
of its gold identifier's tokens above the other candidates: a token-level contrastive loss,

    loss_i = - mean over p in P_i of log softmax_j( s · h_i · c_j )[p],

with ``P_i`` the gold rows (every identifier token's row, or the first token's only), ``c_j``
the candidates (every CE row, or the gold rows of the batch) and ``s`` the stage's logit scale
(times the backbone's output scale, as in :class:`~npdecode.model.NpModel`). The CE table is the
base one (``RUN_DIR/contrastive/base-index``, from the pretrained encoder) and stays fixed.

Then the run re-extracts CE with the stage-1 encoder (``RUN_DIR/index``) and stage 2 trains the
generative retriever from the stage-1 weights (``RUN_DIR/contrastive/backbone``). Each stage
resumes from its own ``lightning/last.ckpt``; a finished stage 1 is not run again.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from npdecode.errors import NpdecodeError
from npdecode.model import NpModel
from npdecode.train.config import TrainConfig
from npdecode.train.module import ResumableModule, lr_factor, make_optimizer


def positives_of(labels: torch.Tensor, eos_id: int, mode: str) -> list[torch.Tensor]:
    """Each example's gold CE rows from the decoder labels (CE ids + EOS, -100 padding): every
    distinct row of the identifier (``identifier``), or the first one (``first``)."""
    out = []
    for row in labels:
        ids = row[(row != -100) & (row != eos_id)]
        out.append(ids[:1] if mode == "first" else torch.unique(ids))
    return out


def contrastive_loss(h: torch.Tensor, ce: torch.Tensor, positives: list[torch.Tensor], negatives: str) -> torch.Tensor:
    """Mean over examples of the mean negative log-softmax of the positives (see the module doc).

    ``h`` (B, d) scaled first states, ``ce`` (V, d) the CE table."""
    if negatives == "all_ce":
        logp = nn.functional.log_softmax(_scores(h, ce), dim=-1)  # (B, V)
        per = [-logp[i, p].mean() for i, p in enumerate(positives)]
    else:  # in_batch: the union of the batch's gold rows
        cand = torch.unique(torch.cat(positives))
        logp = nn.functional.log_softmax(_scores(h, ce.index_select(0, cand)), dim=-1)  # (B, C)
        per = [-logp[i, torch.searchsorted(cand, p)].mean() for i, p in enumerate(positives)]
    return torch.stack(per).mean()


def _scores(h: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    return h.float() @ rows.float().T


class ContrastiveModule(ResumableModule):
    """Stage 1: trains ``model``'s encoder and decoder (not its CE table) with the contrastive loss."""

    def __init__(self, model: NpModel, config: TrainConfig):
        super().__init__()
        self.model, self.config = model, config
        model.ce.requires_grad_(False)
        model.log_scale.requires_grad_(False)

    def first_states(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """(B, d) decoder states after the start row, scaled by the stage's logit scale."""
        enc, enc_mask = self.model.encode(batch["input_ids"], batch["attention_mask"])
        start = batch["decoder_input_ids"][:, :1]
        hidden, _ = self.model._decode(self.model.embed(start), enc, enc_mask)  # (B, 1, d)
        return hidden[:, 0] * (self.config.contrastive.scale * self.model.output_scale)

    def loss(self, batch: Mapping[str, Any]) -> torch.Tensor:
        c = self.config.contrastive
        positives = positives_of(batch["labels"], self.model.eos_id, c.positives)
        return contrastive_loss(self.first_states(batch), self.model.ce, positives, c.negatives)

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch)
        self.check_finite(loss, "contrastive loss", "lower contrastive.lr or contrastive.scale")
        self.log("contrastive/loss", loss, prog_bar=True, batch_size=len(batch["labels"]))
        return loss

    def configure_optimizers(self) -> dict:
        c = self.config.contrastive
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = make_optimizer(c.optimizer, [{"params": params, "lr": c.lr, "weight_decay": 0.0}], c.lr)
        total = self.trainer.estimated_stepping_batches if self._trainer is not None else math.inf
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor("linear", c.warmup_steps, total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def stage_config(config: TrainConfig) -> TrainConfig:
    """The run's config with stage 1's budget and batch size (placement and logging unchanged)."""
    c = config.contrastive
    trainer = config.trainer.model_copy(
        update={"max_epochs": c.max_epochs, "max_steps": c.max_steps, "max_minutes": c.max_minutes}
    )
    if trainer.max_epochs is None and trainer.max_steps < 0 and trainer.max_minutes is None:
        raise NpdecodeError("contrastive: set at least one of max_epochs, max_steps, max_minutes")
    return config.model_copy(
        update={"trainer": trainer, "data": config.data.model_copy(update={"batch_size": c.batch_size})}
    )


def run_stage(config: TrainConfig, out: Path, backbone_ref: str, data, corpus, *, resume: bool, say) -> str:
    """Stage 1 into ``out/contrastive``; returns the stage-1 backbone dir (stage 2 starts from it)."""
    from npdecode.atomic import atomic_dir
    from npdecode.train.components import build_model, make_examples, run_index, targets_of
    from npdecode.train.data import Collate, ExampleSet, TrainData
    from npdecode.train.segments import resume_point
    from npdecode.train.trainer import make_trainer, quiet_fit

    stage = out / "contrastive"
    done = stage / "backbone"
    if (done / "config.json").is_file():
        say(f"contrastive stage 1 is done: {done}")
        return str(done)
    stage.mkdir(parents=True, exist_ok=True)
    base = run_index(data.corpus_path, backbone_ref, stage / "base-index", config, say)
    cfg = stage_config(config)
    model = build_model(
        cfg.model_copy(
            update={
                "model": cfg.model.model_copy(
                    update={"learn_scale": False, "train_ce": False, "token_embeddings": False}
                )
            }
        ),
        backbone_ref,
        base,
    )
    examples, _, tokens = make_examples(cfg, out, model, data, corpus, base, say)
    datamodule = TrainData(
        ExampleSet(tokens, targets_of(base, "np"), examples.groups),
        Collate(model.backbone.pad_token_id, model.start_id),
        batch_size=cfg.data.batch_size,
        seed=cfg.trainer.seed,
        val_qids=[],
        num_workers=cfg.data.num_workers,
    )
    module = ContrastiveModule(model, cfg)
    module.train()
    last = stage / "lightning" / "last.ckpt"
    ckpt_path = str(last) if resume and last.is_file() else None
    if ckpt_path:
        say(f"resuming contrastive stage 1 from {last}")
    say(f"contrastive stage 1: {cfg.contrastive.negatives} negatives, {cfg.contrastive.positives} positives")
    start = time.perf_counter()
    with quiet_fit(cfg):
        resume_step = resume_point(last if ckpt_path else None)[0]  # its logs keep what came before
        trainer, _ = make_trainer(cfg, stage, has_validation=False, resume_step=resume_step)
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    if trainer.interrupted:
        raise NpdecodeError(f"training was interrupted; continue it with --resume --out {out}")
    if trainer.global_rank != 0:
        return str(done)
    with atomic_dir(done, overwrite=True) as tmp:
        model.backbone.model.save_pretrained(tmp)
        model.backbone.tokenizer.save_pretrained(tmp)
        from npdecode.integrity import write_checksums

        write_checksums(tmp)  # last: the stage-2 backbone proves its files like any checkpoint
    say(
        f"contrastive stage 1: {int(trainer.global_step)} steps in "
        f"{(time.perf_counter() - start) / 60:.1f} min -> {done}"
    )
    return str(done)
