"""The LightningModule of every variant: one training step, one validation by real decoding.

The network is a plain :class:`~npdecode.model.NpModel` or :class:`~npdecode.model.VanillaModel`
passed in; this module adds the loss, the optimizer and schedule, the encoder-state cache and
validation. Variants differ only in the model they wrap and which parameters train:

- ``vanilla``: logits over the backbone's vocabulary, token targets;
- ``np``: ``logits = scale · h · CEᵀ`` over the CE table, CE-id targets; the CE table is frozen
  unless ``train_ce``; the logit scale is fixed or learned (its own learning rate).

CE-encoder variants that rebuild the table while training call :meth:`GRModule.replace_ce`
(from a callback) with the new table and targets: the step itself does not change.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from npdecode.errors import NpdecodeError
from npdecode.model import NpModel, VanillaModel
from npdecode.train.config import TrainConfig


class EncoderStateCache:
    """Encoder outputs of a frozen encoder (or, where only its top layers train, the states that
    enter them), one unpadded ``(T_i, d)`` tensor per example id.

    A frozen encoder in eval mode gives the same states every epoch, so each example is
    encoded once (the first time it is drawn) and its states are reused afterwards: a step is
    then a decoder step only (plus the trained top layers).
    """

    def __init__(self) -> None:
        self.states: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.states)

    def fetch(
        self, encoder, ids: torch.Tensor, mask: torch.Tensor, keys: list[int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded states ``(B, T, d)`` and mask ``(B, T)`` for a batch, encoding missing rows."""
        missing = [i for i, key in enumerate(keys) if key not in self.states]
        if missing:
            rows = torch.tensor(missing, device=ids.device)
            with torch.no_grad():
                enc = encoder(ids.index_select(0, rows), mask.index_select(0, rows))  # (M, T, d)
            lengths = mask.index_select(0, rows).sum(1).tolist()
            for j, i in enumerate(missing):
                self.states[keys[i]] = enc[j, : int(lengths[j])].detach()
        parts = [self.states[key] for key in keys]
        width = max(len(p) for p in parts)
        out = parts[0].new_zeros(len(parts), width, parts[0].shape[-1])
        enc_mask = mask.new_zeros(len(parts), width)
        for i, part in enumerate(parts):
            out[i, : len(part)] = part
            enc_mask[i, : len(part)] = 1
        return out, enc_mask


def first_trained_layer(backbone, top: int) -> int:
    """The index of the lowest encoder layer that trains when the top ``top`` layers do."""
    layers = len(backbone.encoder_layers())
    if top > layers:
        raise NpdecodeError(f"model.train_encoder_layers={top}: the encoder has {layers} layers; pick 1..{layers}")
    return layers - top


class ResumableModule(pl.LightningModule):
    """What every training module of a run shares: the global RNG in the checkpoint (dropout
    and sampled negatives draw from it, so a resumed run continues its stream exactly) and a
    one-line error when the loss stops being finite."""

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["npdecode_rng"] = torch.get_rng_state()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "npdecode_rng" in checkpoint:
            torch.set_rng_state(checkpoint["npdecode_rng"])

    def check_finite(self, loss: torch.Tensor, what: str, hint: str) -> None:
        if not torch.isfinite(loss):
            raise NpdecodeError(f"the {what} became {loss.item()} at step {self.global_step}; {hint}")


class GRModule(ResumableModule):
    """Trains a generative retriever; validates it with the constrained decoder.

    ``validator`` (optional) is called as ``validator(model, qids) -> {metric: per-query values}``
    on each validation batch of query ids; the run builds it over the run's trie and index.
    """

    def __init__(
        self,
        model: NpModel | VanillaModel,
        config: TrainConfig,
        validator: Any = None,
        group_ce: list[list[int]] | None = None,
    ):
        super().__init__()
        self.model = model
        self.config = config
        self.validator = validator
        # The documents' CE ids travel with the weights when the table is rebuilt while training
        # (checkpoints, best-model selection, ddp_spawn): flat, in group order, and the epoch of
        # the table (0 = the run's index).
        self.group_lengths = [len(g) for g in group_ce] if group_ce is not None else None
        if group_ce is not None:
            self.register_buffer("group_ce", torch.tensor([c for g in group_ce for c in g], dtype=torch.long))
            self.register_buffer("ce_epoch", torch.tensor(0, dtype=torch.long))
        # Only the top train_encoder_layers encoder layers train (the rest as with freeze_encoder)
        self._trained_layers: list[nn.Module] = []  # a plain list: not registered twice
        self.frozen_below: int | None = None  # first trained encoder layer: the cache holds its input
        top = config.model.train_encoder_layers
        if top is not None:
            self.frozen_below = first_trained_layer(model.backbone, top)
            self._trained_layers = model.backbone.encoder_layers()[self.frozen_below :]
        cached = config.model.cache_encoder_states and (config.model.freeze_encoder or top is not None)
        self.cache = EncoderStateCache() if cached else None
        self._encoder_frozen = config.model.freeze_encoder or top is not None
        if self._encoder_frozen:
            model.backbone.encoder.requires_grad_(False)
            for layer in self._trained_layers:
                layer.requires_grad_(True)

    def setup(self, stage: str) -> None:
        # each process of a spawned multi-process run starts without it (train_run sets it in the launcher)
        from npdecode.device import flush_denormals

        flush_denormals()

    # ---- the step ------------------------------------------------------------------------
    def train(self, mode: bool = True) -> GRModule:
        super().train(mode)
        if self._encoder_frozen:
            self.model.backbone.encoder.eval()  # no dropout: cached states stay exact, frozen layers constant
            for layer in self._trained_layers:
                layer.train(mode)
        return self

    def encoder_states(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = batch["input_ids"], batch["attention_mask"]
        if self.cache is None or not self.training:
            return self.model.encode(ids, mask)
        backbone, keys = self.model.backbone, batch["example"].tolist()
        if self.frozen_below is None:  # a frozen encoder: its outputs
            return self.cache.fetch(backbone.encode, ids, mask, keys)
        # the top layers train: the cache holds what enters them, they run on it every step
        split = self.frozen_below
        states, enc_mask = self.cache.fetch(lambda i, m: backbone.encode_until(i, m, split), ids, mask, keys)
        width = states.shape[1]
        return backbone.encode_from(states, ids[:, :width], enc_mask, split), enc_mask

    def loss(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Mean cross-entropy over the output vocabulary (CE ids or tokens) at every target position."""
        enc, enc_mask = self.encoder_states(batch)
        hidden, _ = self.model._decode(self.model.embed(batch["decoder_input_ids"]), enc, enc_mask)  # (B, L, d)
        # Only the target positions reach the output layer: identifiers differ in length, so about
        # half of a padded batch's positions are padding, and the (positions x vocabulary)
        # product is most of a step. Same loss, fewer rows.
        target = batch["labels"] != -100
        hidden, labels = hidden[target], batch["labels"][target]  # (N, d), (N,)
        sampled = self.config.model.sampled_negatives
        if (
            sampled is not None
            and self.training
            and isinstance(self.model, NpModel)
            and sampled < self.model.vocab_size
        ):
            rows = self.candidate_rows(labels, sampled)
            logits = self.model.logits(hidden, rows)  # (N, |rows|)
            labels = torch.searchsorted(rows, labels)
        else:
            logits = self.model.logits(hidden)  # (N, V_out)
        return nn.functional.cross_entropy(logits.float(), labels)

    def candidate_rows(self, labels: torch.Tensor, n_random: int) -> torch.Tensor:
        """Sorted CE rows a sampled softmax runs over: the batch's gold rows, every row of their
        tokens (the rows a gold row really competes with: same token, other contexts) and
        ``n_random`` rows drawn uniformly (the global generator: checkpointed, so resumable)."""
        token_of = self.model.ce_token_ids
        gold = torch.unique(labels[labels >= 0])
        same_token = torch.isin(token_of, token_of[gold]).nonzero().flatten()
        drawn = torch.randint(len(token_of), (n_random,), device=token_of.device)
        return torch.unique(torch.cat([gold, same_token, drawn]))

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch)
        self.check_finite(loss, "training loss", "lower optim.lr or model.logit_scale (or use precision 32-true)")
        self.log("loss", loss, prog_bar=True, batch_size=len(batch["labels"]))
        if isinstance(self.model, NpModel) and self.model.log_scale.requires_grad:
            self.log("logit_scale", self.model.log_scale.exp(), batch_size=len(batch["labels"]))
        return loss

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("state_dict", {})
        if self.group_lengths is not None and "model.ce" in state:  # a rebuilt table may have another row count
            self.replace_ce(state["model.ce"], state["model.ce_token_ids"])

    # ---- validation ----------------------------------------------------------------------
    def validation_step(self, batch: list[str], batch_idx: int) -> None:
        if self.validator is None or not batch:
            return
        values = self.validator(self.model, batch)
        for metric, per_query in values.items():
            mean = sum(per_query) / len(per_query)
            self.log(
                f"val/{metric}",
                mean,
                prog_bar=metric == self.config.validation.metric,
                batch_size=len(per_query),
                sync_dist=True,
            )

    # ---- CE table (CE-encoder variants) --------------------------------------------------
    def replace_ce(
        self,
        ce: torch.Tensor,
        ce_token_ids: torch.Tensor,
        group_ce: torch.Tensor | None = None,
        epoch: int | None = None,
    ) -> None:
        """Swap in a rebuilt CE table (same row layout: special rows first) and, for a run that
        tracks them, the documents' new CE ids; optimizer state of a trainable table is reset by
        the caller. Same-shape tensors are copied in place (ddp keeps references to buffers)."""
        with torch.no_grad():
            ce = ce.to(self.model.ce.device, self.model.ce.dtype)
            if ce.shape == self.model.ce.shape:
                self.model.ce.copy_(ce)
            else:
                self.model.ce.data = ce.clone()
            ids = ce_token_ids.to(self.model.ce_token_ids.device, torch.long)
            if ids.shape == self.model.ce_token_ids.shape:
                self.model.ce_token_ids.copy_(ids)
            else:
                self.model.ce_token_ids = ids.clone()
            if group_ce is not None:
                self.group_ce.copy_(group_ce.to(self.group_ce.device))
            if epoch is not None:
                self.ce_epoch.fill_(epoch)

    def targets(self) -> list[list[int]]:
        """Each group's decoder target under the current table: CE ids + the EOS row."""
        flat, out, start = self.group_ce.tolist(), [], 0
        for n in self.group_lengths:
            out.append(flat[start : start + n] + [self.model.eos_id])
            start += n
        return out

    # ---- optimizer and schedule ----------------------------------------------------------
    def configure_optimizers(self) -> dict:
        opt_cfg = self.config.optim
        scale = getattr(self.model, "log_scale", None)
        main = [p for p in self.model.parameters() if p.requires_grad and p is not scale]
        groups = [{"params": main, "lr": opt_cfg.lr, "weight_decay": opt_cfg.weight_decay}]
        if scale is not None and scale.requires_grad:
            groups.append({"params": [scale], "lr": opt_cfg.scale_lr, "weight_decay": 0.0})
        if opt_cfg.encoder_lr is not None:  # the (pretrained) encoder at its own, usually lower, rate
            encoder = {id(p) for p in self.model.backbone.encoder.parameters()}
            groups[0]["params"] = [p for p in main if id(p) not in encoder]
            groups.append(
                {
                    "params": [p for p in main if id(p) in encoder],
                    "lr": opt_cfg.encoder_lr,
                    "weight_decay": opt_cfg.weight_decay,
                }
            )
        optimizer = make_optimizer(opt_cfg.optimizer, groups, opt_cfg.lr)
        total = self.trainer.estimated_stepping_batches if self._trainer is not None else math.inf
        factor = lr_factor(opt_cfg.schedule, opt_cfg.warmup_steps, total, time_done(self._trainer))
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def time_done(trainer) -> Callable[[], float] | None:
    """Fraction of the wall-clock budget (trainer.max_minutes) spent, from Lightning's Timer (its
    elapsed time survives a resume); None without a time budget."""
    from pytorch_lightning.callbacks import Timer

    timer = next((c for c in (trainer.callbacks if trainer is not None else []) if isinstance(c, Timer)), None)
    if timer is None or timer._duration is None:
        return None
    budget = float(timer._duration)
    return lambda: min(1.0, timer.time_elapsed("train") / budget)


def make_optimizer(name: str, groups: list[dict], lr: float) -> torch.optim.Optimizer:
    """AdamW, or Adafactor as the paper ran it (a fixed rate, no relative step or parameter scaling)."""
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    from transformers.optimization import Adafactor

    return Adafactor(groups, lr=lr, scale_parameter=False, relative_step=False, warmup_init=False)


def lr_factor(schedule: str, warmup: int, total: float, time_done: Callable[[], float] | None = None):
    """Multiplier of the learning rate at a step: linear warm-up, then constant / linear / cosine
    decay to 0 at ``total`` steps or, with a time budget (``time_done``: fraction spent), at the
    end of the budget, whichever comes first."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        done = min(1.0, (step - warmup) / max(1.0, total - warmup)) if math.isfinite(total) and total > warmup else 0.0
        if time_done is not None:
            done = max(done, time_done())
        return 1.0 - done if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * done))

    return factor
