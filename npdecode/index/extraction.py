"""Step 2 of Np Decoding: raw CE vectors at identifier positions, as a Lightning predict loop.

Identifier groups are cut into shards of ``shard_size`` documents. Each process (``--devices``
x ``--num-nodes``) takes every ``world_size``-th shard, tokenizes it (``identifier + text``,
truncated), sorts it by length and cuts it into batches of at most ``batch_tokens`` padded
tokens, so padding is small and batches are the same whatever the number of processes. The
encoder's last hidden state is kept at the identifier positions only, and a prediction writer
saves one file per finished shard (atomically): a shard whose file exists is done and is not
redone when an interrupted build runs again.

Shard file (safetensors): ``groups`` (n,) int64 identifier-group index of each document,
``counts`` (n,) int64 identifier tokens per document, ``tokens`` (N,) int64 token ids and
``vectors`` (N, d) float32 raw CE, occurrences in document order.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, IterableDataset

from npdecode.atomic import atomic_file

Tokenize = Callable[[str, str, int], tuple[Sequence[int], Sequence[int]]]


def shard_path(shard_dir: Path, shard: int) -> Path:
    return Path(shard_dir) / f"shard-{shard:05d}.safetensors"


def shard_count(n_groups: int, shard_size: int) -> int:
    return (n_groups + shard_size - 1) // shard_size


def length_batches(lengths: Sequence[int], batch_tokens: int, batch_size: int) -> list[list[int]]:
    """Indices grouped into batches by descending length: each batch has at most
    ``batch_size`` items and ``batch_tokens`` padded tokens (a longer single item still runs)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        width = lengths[current[0]] if current else lengths[i]  # longest comes first
        if current and (len(current) >= batch_size or width * (len(current) + 1) > batch_tokens):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


class ShardBatches(IterableDataset):
    """Padded batches of the given shards; each batch says which shard it ends, if any."""

    def __init__(
        self,
        docs: Sequence[tuple[str, str]],
        shards: Sequence[int],
        tokenize: Tokenize,
        pad_id: int,
        *,
        shard_size: int,
        max_length: int,
        batch_tokens: int,
        batch_size: int,
    ) -> None:
        self.docs, self.shards, self.tokenize, self.pad_id = docs, list(shards), tokenize, pad_id
        self.shard_size, self.max_length = shard_size, max_length
        self.batch_tokens, self.batch_size = batch_tokens, batch_size

    def batching(self) -> dict[str, int]:
        """The batching settings, to make the same batches over other shards."""
        return {
            "shard_size": self.shard_size,
            "max_length": self.max_length,
            "batch_tokens": self.batch_tokens,
            "batch_size": self.batch_size,
        }

    def __iter__(self) -> Iterator[dict]:
        for shard in self.shards:
            start = shard * self.shard_size
            members = range(start, min(start + self.shard_size, len(self.docs)))
            encoded = [self.tokenize(*self.docs[g], self.max_length) for g in members]
            batches = length_batches([len(ids) for ids, _ in encoded], self.batch_tokens, self.batch_size)
            for b, batch in enumerate(batches):
                yield self._collate(
                    shard, b == len(batches) - 1, [members[i] for i in batch], [encoded[i] for i in batch]
                )

    def _collate(self, shard: int, last: bool, groups: list[int], encoded: list) -> dict:
        width = max(len(ids) for ids, _ in encoded)
        input_ids = torch.full((len(encoded), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(encoded), width), dtype=torch.long)
        rows, cols = [], []
        for b, (ids, positions) in enumerate(encoded):
            input_ids[b, : len(ids)] = torch.as_tensor(list(ids), dtype=torch.long)
            mask[b, : len(ids)] = 1
            rows += [b] * len(positions)
            cols += list(positions)
        return {
            "shard": shard,
            "last": last,
            "groups": torch.tensor(groups, dtype=torch.long),
            "input_ids": input_ids,
            "attention_mask": mask,
            "rows": torch.tensor(rows, dtype=torch.long),
            "cols": torch.tensor(cols, dtype=torch.long),
        }


class ShardData(pl.LightningDataModule):
    """Gives each process its shards (``shard % world_size == rank``) once ranks are known."""

    def __init__(
        self, docs: Sequence[tuple[str, str]], todo: Sequence[int], tokenize: Tokenize, pad_id: int, **batching: int
    ) -> None:
        super().__init__()
        self.docs, self.todo, self.tokenize, self.pad_id, self.batching = docs, todo, tokenize, pad_id, batching

    def predict_dataloader(self) -> DataLoader:
        rank, world = self.trainer.global_rank, self.trainer.world_size
        mine = [s for s in self.todo if s % world == rank]
        data = ShardBatches(self.docs, mine, self.tokenize, self.pad_id, **self.batching)
        return DataLoader(data, batch_size=None, num_workers=0)


class CEExtractor(pl.LightningModule):
    """Runs the encoder and keeps hidden states at identifier positions.

    ``encoder`` is the backbone's encoder stack (``Backbone.encoder``), a plain HF module that
    returns ``last_hidden_state``; Lightning moves it to the device and applies the precision.
    """

    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = encoder.eval()

    def predict_step(self, batch: dict, batch_idx: int = 0) -> dict:
        return pick_ce(self.encoder, batch)


def pick_ce(encoder: torch.nn.Module, batch: dict, hidden_states: Callable[[dict], torch.Tensor] | None = None) -> dict:
    """One batch's raw CE: the encoder's last hidden state at the identifier positions (on CPU).
    ``hidden_states(batch)``, when given, computes that state instead of ``encoder``."""
    if hidden_states is not None:
        hidden = hidden_states(batch)
    else:
        hidden = encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    picked = hidden[batch["rows"], batch["cols"]].float()  # (N, d) identifier positions
    counts = torch.bincount(batch["rows"], minlength=len(batch["groups"]))
    return {
        "groups": batch["groups"].cpu(),
        "counts": counts.cpu(),
        "tokens": batch["input_ids"][batch["rows"], batch["cols"]].cpu(),
        "vectors": picked.cpu(),
    }


def encode_in_memory(
    encoder: torch.nn.Module,
    data: ShardBatches,
    *,
    precision: str = "32-true",
    rank: int = 0,
    world_size: int = 1,
    hidden_states: Callable[[dict], torch.Tensor] | None = None,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """What :func:`run_extraction` + :func:`read_shards` give, without files or a Trainer: the
    same shards and batches, encoded in this process by ``encoder`` as it is now (a model being
    trained: its mode is restored afterwards), or by ``hidden_states(batch)`` (see :func:`pick_ce`);
    ``progress`` shows a bar of the documents encoded (by this rank).
    Under ddp each rank encodes every ``world_size``-th shard and the shards are exchanged, so
    every rank returns all of them."""
    device = next(encoder.parameters()).device
    mine = [s for s in data.shards if s % world_size == rank]
    shards: dict[int, dict[str, torch.Tensor]] = {}
    parts: list[dict] = []
    was_training = encoder.training
    encoder.eval()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(data.docs) // world_size, unit="doc", desc="encoding", smoothing=0.1)
    try:
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed")
        with torch.inference_mode(), autocast:
            for batch in ShardBatches(data.docs, mine, data.tokenize, data.pad_id, **data.batching()):
                moved = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                parts.append(pick_ce(encoder, moved, hidden_states))
                if bar is not None:
                    bar.update(len(batch["groups"]))
                if batch["last"]:
                    shards[batch["shard"]] = shard_payload(parts)
                    parts = []
    finally:
        encoder.train(was_training)
        if bar is not None:
            bar.close()
    if world_size > 1:
        gathered: list = [None] * world_size
        torch.distributed.all_gather_object(gathered, shards)
        shards = {s: p for g in gathered for s, p in g.items()}
    ordered = [shards[s] for s in sorted(shards)]
    return {key: np.concatenate([p[key].numpy() for p in ordered]) for key in ("groups", "counts", "tokens", "vectors")}


class ShardWriter(BasePredictionWriter):
    """Collects a shard's batches and writes its file when the shard's last batch is done."""

    def __init__(self, shard_dir: Path, total_docs: int, progress: bool) -> None:
        super().__init__(write_interval="batch")
        self.shard_dir, self.total_docs, self.progress = Path(shard_dir), total_docs, progress
        self._parts: list[dict] = []
        self._bar = None

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.progress and trainer.global_rank == 0:
            from tqdm.auto import tqdm

            # Rank 0 counts its own documents x world size: an estimate, shards are even.
            self._bar = tqdm(total=self.total_docs, unit="doc", desc="encoding", smoothing=0.1)

    def write_on_batch_end(
        self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0
    ) -> None:
        self._parts.append(prediction)
        if self._bar is not None:
            self._bar.update(len(prediction["groups"]) * trainer.world_size)
        if batch["last"]:
            write_shard(shard_path(self.shard_dir, batch["shard"]), self._parts)
            self._parts = []

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._bar is not None:
            self._bar.close()


def write_shard(path: Path, parts: list[dict]) -> None:
    """Write one shard's predictions, documents sorted by group index (atomically)."""
    from safetensors.torch import save

    with atomic_file(path, "wb") as fh:
        fh.write(save(shard_payload(parts)))


def shard_payload(parts: list[dict]) -> dict[str, torch.Tensor]:
    """One shard's batch predictions in group order (batches ran by length)."""
    groups = torch.cat([p["groups"] for p in parts])
    counts = torch.cat([p["counts"] for p in parts])
    tokens = torch.cat([p["tokens"] for p in parts])
    vectors = torch.cat([p["vectors"] for p in parts])
    # Reorder occurrences document by document into group order (batches were by length).
    starts = torch.cumsum(counts, 0) - counts
    order = torch.argsort(groups)
    take = torch.cat([torch.arange(int(starts[i]), int(starts[i] + counts[i])) for i in order.tolist()])
    return {
        "groups": groups[order].contiguous(),
        "counts": counts[order].contiguous(),
        "tokens": tokens[take].contiguous(),
        "vectors": vectors[take].contiguous(),
    }


def read_shards(shard_dir: Path, n_shards: int) -> dict[str, np.ndarray]:
    """Concatenate all shard files, in group order (shard order = group order)."""
    from safetensors.numpy import load_file

    parts = [load_file(str(shard_path(shard_dir, s))) for s in range(n_shards)]
    return {key: np.concatenate([p[key] for p in parts]) for key in ("groups", "counts", "tokens", "vectors")}


def run_extraction(
    module: CEExtractor,
    data: ShardData,
    shard_dir: Path,
    *,
    accelerator: str,
    devices: int,
    num_nodes: int,
    strategy: str,
    precision: str,
    progress: bool,
) -> int:
    """Encode every shard in ``data.todo`` with a Lightning predict loop (any number of processes).

    Returns this process's global rank: only rank 0 goes on to write the index.
    """
    total = sum(min(data.batching["shard_size"], len(data.docs) - s * data.batching["shard_size"]) for s in data.todo)
    with quiet_lightning():
        trainer = pl.Trainer(
            accelerator=accelerator,
            devices=devices,
            num_nodes=num_nodes,
            strategy=strategy,
            precision=precision,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            use_distributed_sampler=False,
            callbacks=[ShardWriter(shard_dir, total, progress)],
        )
        trainer.predict(module, datamodule=data, return_predictions=False)
    trainer.strategy.barrier("npdecode-shards-done")  # ddp: every rank's shards are on disk
    return trainer.global_rank


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Lightning's "GPU available" banners down to warnings (the index command prints its own
    summary), and its batch-indices warning off: batches come from an IterableDataset by design."""
    logger = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*infer the batch indices.*")
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")  # Lightning vs torch
            yield
    finally:
        logger.setLevel(level)
