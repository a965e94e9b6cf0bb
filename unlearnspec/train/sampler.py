"""Which rows each rank trains in each micro-batch: every optimizer step holds the same rows at any world size.

One permutation per epoch (accelerate's SeedableRandomSampler: `randperm(N)` seeded with seed + epoch, so a
one-process run keeps its order), cut into steps of `global_batch` rows. A full step is cut into W x A
chunks of `micro_batch_size` rows; rank r takes chunks r, r + W, r + 2W, ... (accelerate's layout, and the
order in which MAGIC records a step). The last, short step of an epoch is dealt as evenly as possible over
W x c chunks (c = tail_micro_batches), every chunk non-empty (spec.batch refuses layouts where that is
impossible). accelerate's own sharding (`even_batches`) would instead pad that step with repeated rows from
the start of the epoch under W ranks, training another experiment.
"""

from __future__ import annotations

from typing import Any, Iterator

import torch

from unlearnspec.spec.batch import BatchLayout, tail_micro_batches


def rank_micro_batches(step: list[int], layout: BatchLayout, rank: int) -> list[list[int]]:
    """This rank's micro-batches of one optimizer step's rows (in the epoch's order)."""
    w = layout.world_size
    if len(step) == layout.global_batch:
        m = layout.micro_batch_size
        return [step[(j * w + rank) * m : (j * w + rank + 1) * m] for j in range(layout.accumulation)]
    chunks = w * tail_micro_batches(len(step), layout)
    if len(step) < chunks:
        raise ValueError(f"a step of {len(step)} rows cannot give each of {chunks} micro-batches a row")
    base, extra = divmod(len(step), chunks)
    bounds = [0]
    for i in range(chunks):
        bounds.append(bounds[-1] + base + (1 if i < extra else 0))
    return [step[bounds[i] : bounds[i + 1]] for i in range(rank, chunks, w)]


class GlobalBatchSampler:
    """A batch sampler (yields lists of row indices) of this rank's micro-batches, epoch after epoch.

    No `sampler` or `batch_size` attribute on purpose: accelerate would swap a RandomSampler it finds and
    re-shard batches of a known size; the trainer turns its sharding wrapper into a pass-through instead."""

    def __init__(self, n_rows: int, layout: BatchLayout, rank: int, shuffle: bool, seed: int):
        if not 0 <= rank < layout.world_size:
            raise ValueError(f"rank {rank} outside a world of {layout.world_size}")
        self.n_rows, self.layout, self.rank, self.shuffle, self.seed = n_rows, layout, rank, shuffle, seed
        self.epoch = 0
        rest = n_rows % layout.global_batch
        self._tail = tail_micro_batches(rest, layout) if rest else 0
        if rest and rest < layout.world_size * self._tail:
            raise ValueError(f"the last step of an epoch ({rest} rows) cannot give each rank a row")

    def set_epoch(self, epoch: int) -> None:
        """The Trainer names the epoch before iterating (the permutation's seed is seed + epoch)."""
        self.epoch = epoch

    def order(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.n_rows))
        generator = torch.Generator(device="cpu")  # row indices live on the host: the DataLoader indexes with them
        generator.manual_seed(self.seed + self.epoch)
        return torch.randperm(self.n_rows, generator=generator, device="cpu").tolist()

    def __len__(self) -> int:
        return (self.n_rows // self.layout.global_batch) * self.layout.accumulation + self._tail

    def __iter__(self) -> Iterator[list[int]]:
        order, b = self.order(), self.layout.global_batch
        for start in range(0, self.n_rows, b):
            yield from rank_micro_batches(order[start : start + b], self.layout, self.rank)
        self.epoch += 1


def prepared_train_dataloader(trainer: Any, layout: BatchLayout) -> Any:
    """The trainer's training DataLoader over `GlobalBatchSampler`, passed through accelerate for device
    placement with its sharding disabled (the sampler is rank-aware; HF does the same for its own
    rank-aware BatchRebalanceSampler)."""
    from torch.utils.data import DataLoader

    args = trainer.args
    dataset = trainer.train_dataset
    sampler = GlobalBatchSampler(
        len(dataset),
        layout,
        args.process_index if layout.world_size > 1 else 0,
        shuffle=args.train_sampling_strategy != "sequential",
        seed=args.data_seed if args.data_seed is not None else args.seed,
    )
    loader = trainer.accelerator.prepare(
        DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=trainer.data_collator,
            num_workers=args.dataloader_num_workers,
            pin_memory=args.dataloader_pin_memory,
        )
    )
    wrapper = getattr(loader, "batch_sampler", None)
    if wrapper is not sampler:
        if wrapper is None or getattr(wrapper, "batch_sampler", None) is not sampler:
            raise RuntimeError(f"accelerate wrapped the training sampler unexpectedly ({type(wrapper).__name__})")
        wrapper.num_processes, wrapper.process_index = 1, 0  # BatchSamplerShard -> pass-through
    return loader
