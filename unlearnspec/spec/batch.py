"""The global batch of a spec shared by the ranks of one launch: per-rank micro-batch and accumulation,
derived from the world size, and the refusals (with a fix that works) when the ranks cannot share it.

`training.batch_size` is the global batch (rows per optimizer step); `training.micro_batch_size` bounds the
rows of one forward/backward on one rank. Neither the world size nor the micro-batch changes which rows
an optimizer step trains on (see unlearnspec/train/sampler.py), so a spec is one experiment at any rank
count. Imports no torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

from unlearnspec.errors import UserError


@dataclass(frozen=True)
class BatchLayout:
    """How one optimizer step's `global_batch` rows are split: `world_size` ranks x `accumulation`
    micro-batches of `micro_batch_size` rows each."""

    global_batch: int
    world_size: int
    micro_batch_size: int
    accumulation: int

    def as_dict(self) -> dict[str, int]:
        return {
            "global_batch": self.global_batch,
            "world_size": self.world_size,
            "micro_batch_size": self.micro_batch_size,
            "accumulation": self.accumulation,
        }

    def describe(self) -> str:
        """e.g. `8 rows per step = 2 ranks x 4 rows x 1 micro-batch`."""
        ranks = f"{self.world_size} rank{'s' if self.world_size != 1 else ''}"
        micro = f"{self.accumulation} micro-batch{'es' if self.accumulation != 1 else ''}"
        rows = f"{self.micro_batch_size} row{'s' if self.micro_batch_size != 1 else ''}"
        return f"{self.global_batch} rows per step = {ranks} x {rows} x {micro}"


def optimizer_steps(training: Any, n_rows: int) -> int:
    """Optimizer steps of the run: `max_steps`, else `epochs` over N rows at `batch_size` rows per step
    (the last step of an epoch holds the remaining rows)."""
    if training.max_steps is not None:
        return int(training.max_steps)
    per_epoch = math.ceil(n_rows / training.batch_size)
    return max(1, math.ceil(per_epoch * (training.epochs or 1.0)))


def tail_micro_batches(rows: int, layout: BatchLayout) -> int:
    """Micro-batches per rank in an epoch's last, short step of `rows` rows: as few as fit
    `micro_batch_size` rows each over all ranks (the rows are then dealt as evenly as possible)."""
    return math.ceil(rows / (layout.world_size * layout.micro_batch_size))


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _nearest(values: list[int], target: int) -> list[int]:
    """The nearest value at or below `target` and the nearest above it (those that exist)."""
    below = [v for v in values if v <= target]
    above = [v for v in values if v > target]
    return ([max(below)] if below else []) + ([min(above)] if above else [])


def _or(values: list[int]) -> str:
    return " or ".join(str(v) for v in values)


def _tail_rows(training: Any, n_rows: Optional[int]) -> int:
    """Rows of the short last step of an epoch that the run reaches (0: every step it takes is full)."""
    if n_rows is None:
        return 0
    rows = n_rows % training.batch_size
    full_steps = n_rows // training.batch_size
    return rows if rows and optimizer_steps(training, n_rows) > full_steps else 0


def _fits(batch: int, world: int, micro: Optional[int], tail: int) -> bool:
    if batch % world:
        return False
    share = batch // world
    m = micro if micro is not None else share
    if m > share or share % m:
        return False
    layout = BatchLayout(batch, world, m, share // m)
    return not tail or world * tail_micro_batches(tail, layout) <= tail


def batch_layout(
    training: Any, world_size: int, *, file: str = "spec", launch: str = "", n_rows: Optional[int] = None
) -> BatchLayout:
    """The layout of `training` (a TrainingSpec) on `world_size` ranks, or a UserError naming the field, the
    world size (`launch` says where it came from, e.g. `--nproc 3`) and a fix that keeps the experiment.

    With `n_rows` (N of the grid), also refuses a run whose epoch ends in a step too short to give every rank
    a row per micro-batch (a rank without rows would need padding rows, which change the step)."""
    batch, micro, world = int(training.batch_size), training.micro_batch_size, int(world_size)
    where = f"{world} rank{'s' if world != 1 else ''}" + (f" ({launch})" if launch else "")
    if world < 1:
        raise ValueError(f"world size must be >= 1 (got {world})")
    if batch % world:
        ranks = _nearest(_divisors(batch), world)
        raise UserError.one(
            file,
            f"batch_size {batch} is the global batch (rows per optimizer step), which {where} "
            f"cannot share equally. Launch a rank count that divides {batch} (nearest: {_or(ranks)}). "
            "Changing batch_size instead would make it another experiment.",
            loc="training.batch_size",
        )
    share = batch // world
    if micro is not None and (micro > share or share % micro):
        fits = [d for d in _divisors(share) if d <= micro]
        best = max(fits)
        head = (
            f"micro_batch_size {micro} is larger than each rank's share of the global batch"
            if micro > share
            else f"micro_batch_size {micro} does not divide each rank's share of the global batch"
        )
        raise UserError.one(
            file,
            f"{head} (batch_size {batch} over {where} = {share} rows per rank). Set "
            f"`micro_batch_size: {best}` ({share // best} micro-batch{'es' if share // best != 1 else ''} "
            f"per step), a divisor of {share} no larger than {micro}, or delete it ({share} rows per "
            "forward pass).",
            loc="training.micro_batch_size",
        )
    m = micro if micro is not None else share
    layout = BatchLayout(batch, world, m, share // m)
    tail = _tail_rows(training, n_rows)
    if tail and world * tail_micro_batches(tail, layout) > tail:
        ranks = [w for w in _divisors(batch) if w < world and _fits(batch, w, micro, tail)]
        micros = [d for d in _divisors(share) if _fits(batch, world, d, tail)]
        fixes = [f"launch {max(ranks)} rank{'s' if max(ranks) != 1 else ''}"] if ranks else []
        if micros:  # the smallest that works: micro_batch_size is a memory bound
            fixes.append(f"set `micro_batch_size: {min(micros)}`")
        fix = " or ".join(fixes) or "launch fewer ranks"
        per_rank = tail_micro_batches(tail, layout)
        need = "a row" if per_rank == 1 else f"a row in each of its {per_rank} micro-batches"
        raise UserError.one(
            file,
            f"each epoch of {n_rows} rows ends in a step of {tail} rows (batch_size {batch}), "
            f"too few to give each of {where} {need}; padding a rank with repeated rows (as "
            f"accelerate does) would change the experiment. {fix[0].upper() + fix[1:]}.",
            loc="training.batch_size",
        )
    return layout
