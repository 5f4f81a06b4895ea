"""The LightningDataModule: tokenized examples -> padded teacher-forcing batches.

A batch holds ``input_ids``/``attention_mask`` (B, T) encoder inputs, ``decoder_input_ids``
(B, L) = ``[start] + target[:-1]`` (right-padded with the start id), ``labels`` (B, L) = the
target (output ids: CE rows for Np, tokens for vanilla; -100 on padding) and ``example`` (B,)
the example ids (keys of the encoder-state cache). Shuffling is seeded per epoch, and in
distributed runs each rank takes every ``world_size``-th example of the epoch's order, so a
resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from npdecode.train.examples import Tokenized


class EpochShuffle(Sampler[int]):
    """A permutation of ``range(n)`` drawn from ``seed + epoch``; rank ``r`` of ``w`` takes
    positions ``r, r + w, ...`` (the order padded by wrapping so every rank has as many).

    With ``lengths`` (each example's target length) and ``buckets`` > 1, batches are made of
    examples of similar length, so little of a batch is padding: the permutation is cut into
    chunks of ``buckets`` global batches (``batch_size * w`` examples), each chunk is sorted by
    length and cut into global batches, and the full global batches of the whole epoch are
    shuffled (a short last one stays last). Every batch is still a random draw of the epoch.
    """

    def __init__(
        self,
        n: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        *,
        lengths: Sequence[int] | None = None,
        batch_size: int = 1,
        buckets: int = 0,
    ):
        self.n, self.seed, self.rank, self.world = n, seed, rank, world_size
        self.shuffle, self.epoch = shuffle, 0
        self.lengths = np.asarray(lengths) if lengths is not None and buckets > 1 else None
        self.batch_size, self.buckets = batch_size, buckets

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return (self.n + self.world - 1) // self.world

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.n, generator=generator).tolist()
            if self.lengths is not None:
                order = self._bucketed(order, generator)
        else:
            order = list(range(self.n))
        order += order[: len(self) * self.world - self.n]
        return iter(order[self.rank :: self.world])

    def _bucketed(self, order: list[int], generator: torch.Generator) -> list[int]:
        block = self.batch_size * self.world  # one global batch: rank r takes its r-th, w-th, ...
        chunk = block * self.buckets
        blocks = []
        for start in range(0, len(order), chunk):
            part = np.asarray(order[start : start + chunk])
            part = part[np.argsort(self.lengths[part], kind="stable")]
            blocks += [part[i : i + block] for i in range(0, len(part), block)]
        tail = [blocks.pop()] if blocks and len(blocks[-1]) < block else []
        mixed = torch.randperm(len(blocks), generator=generator).tolist()
        return [int(i) for b in [blocks[j] for j in mixed] + tail for i in b]


class ExampleSet(Dataset):
    """Example ``i``: its encoder input ids and its target (output ids ending with EOS)."""

    def __init__(self, inputs: Tokenized, targets: Sequence[Sequence[int]], groups: Sequence[int]):
        self.inputs, self.targets, self.groups = inputs, targets, np.asarray(groups)

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray, Sequence[int]]:
        return i, self.inputs.row(i), self.targets[self.groups[i]]

    def target_lengths(self) -> np.ndarray:
        per_group = np.array([len(t) for t in self.targets])
        return per_group[self.groups] if len(self.groups) else np.zeros(0, dtype=int)


class Collate:
    """Pads a list of examples into a teacher-forcing batch (see the module docstring)."""

    def __init__(self, pad_id: int, start_id: int):
        self.pad_id, self.start_id = pad_id, start_id

    def __call__(self, items: list[tuple[int, np.ndarray, Sequence[int]]]) -> dict[str, torch.Tensor]:
        n = len(items)
        width = max(len(x) for _, x, _ in items)
        length = max(len(t) for _, _, t in items)
        input_ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        dec = torch.full((n, length), self.start_id, dtype=torch.long)
        labels = torch.full((n, length), -100, dtype=torch.long)
        for row, (_, ids, target) in enumerate(items):
            input_ids[row, : len(ids)] = torch.as_tensor(ids, dtype=torch.long)
            mask[row, : len(ids)] = 1
            target = torch.as_tensor(list(target), dtype=torch.long)
            labels[row, : len(target)] = target
            dec[row, 1 : len(target)] = target[:-1]
        example = torch.tensor([i for i, _, _ in items], dtype=torch.long)
        return {
            "input_ids": input_ids,
            "attention_mask": mask,
            "decoder_input_ids": dec,
            "labels": labels,
            "example": example,
        }


class TrainData(pl.LightningDataModule):
    """Training batches over ``examples`` and validation batches of query ids (``val_qids``)."""

    def __init__(
        self,
        examples: ExampleSet,
        collate: Collate,
        *,
        batch_size: int,
        seed: int,
        val_qids: Sequence[str] = (),
        val_batch_size: int = 32,
        num_workers: int = 0,
        length_buckets: int = 0,
    ):
        super().__init__()
        self.examples, self.collate = examples, collate
        self.batch_size, self.seed, self.num_workers = batch_size, seed, num_workers
        self.length_buckets = length_buckets
        self.val_qids, self.val_batch_size = list(val_qids), val_batch_size

    def _placement(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def train_dataloader(self) -> DataLoader:
        rank, world = self._placement()
        sampler = EpochShuffle(
            len(self.examples),
            self.seed,
            rank,
            world,
            lengths=self.examples.target_lengths(),
            batch_size=self.batch_size,
            buckets=self.length_buckets,
        )
        return DataLoader(
            self.examples,
            batch_size=self.batch_size,
            sampler=sampler,
            collate_fn=self.collate,
            num_workers=self.num_workers,
            drop_last=False,
        )

    def val_dataloader(self) -> DataLoader:
        rank, world = self._placement()
        qids = self.val_qids[rank::world]
        return DataLoader(qids, batch_size=self.val_batch_size, shuffle=False, collate_fn=list)
