"""Row shards of parameter-sized tensors and the two autograd-aware collectives of the sharded (FSDP) reverse pass.

Layout (FSDP2's `Shard(0)`): a tensor of R rows (dim 0) is cut into W chunks of c = ceil(R / W) rows; rank r
holds rows [r c, min((r+1) c, R)), possibly none. `gather_rows` (all-gather) turns a shard into the full
tensor inside the differentiable forward; its backward is `scatter_rows` (reduce-scatter, summed over the
ranks), whose backward is `gather_rows` again, so the pair can be differentiated any number of times: the
first backward reduce-scatters the gradient, the double backward all-gathers the adjoint and reduce-scatters
H v. Under several ranks every rank must make the same calls in the same order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

SUM_ACROSS_RANKS = True
"""Test-only switch: False turns the reduce-scatter into a local slice (each rank keeps its own rows' part
of the gradient and of H v). The mutation tests flip it to show the exactness checks fail without it."""


@dataclass(frozen=True)
class ShardGroup:
    """Who I am among the ranks that share the parameters, and how to talk to them (`dist` None: one rank)."""

    rank: int
    world_size: int
    dist: Any = None
    """torch.distributed when world_size > 1."""

    def rows(self, total: int) -> tuple[int, int]:
        """[start, stop) of my rows of a tensor with `total` rows."""
        c = math.ceil(total / self.world_size)
        return min(self.rank * c, total), min((self.rank + 1) * c, total)

    def shard(self, full: torch.Tensor) -> torch.Tensor:
        """My rows of a full tensor (a view)."""
        if full.dim() == 0:
            raise ValueError("a 0-dimensional parameter cannot be sharded by rows")
        a, b = self.rows(full.shape[0])
        return full[a:b]

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum a small tensor (a norm, a dot product) over the ranks, in place; returns it."""
        if self.world_size > 1:
            self.dist.all_reduce(tensor)
        return tensor


def _call(dist: Any, name: str, older: str, out: torch.Tensor, inp: torch.Tensor) -> None:
    """The collective under its torch 2.13 name, or its older one (deprecated in 2.13)."""
    (getattr(dist, name, None) or getattr(dist, older))(out, inp)


def _padded(shard: torch.Tensor, rows: int) -> torch.Tensor:
    """`shard` with zero rows appended up to `rows` (itself when it already has them), contiguous."""
    if shard.shape[0] == rows:
        return shard.contiguous()
    out = shard.new_zeros((rows, *shard.shape[1:]))
    out[: shard.shape[0]] = shard
    return out


def all_gather_rows(shard: torch.Tensor, total: int, group: ShardGroup) -> torch.Tensor:
    """The full tensor of `total` rows from every rank's shard (no autograd)."""
    if group.world_size == 1:
        return shard
    c = math.ceil(total / group.world_size)
    out = shard.new_empty((c * group.world_size, *shard.shape[1:]))
    _call(group.dist, "all_gather_single", "all_gather_into_tensor", out, _padded(shard, c))
    return out[:total]


def reduce_scatter_rows(full: torch.Tensor, group: ShardGroup) -> torch.Tensor:
    """My rows of the sum over the ranks of `full` (no autograd)."""
    if group.world_size == 1:
        return full
    total = full.shape[0]
    c = math.ceil(total / group.world_size)
    a, b = group.rows(total)
    if not SUM_ACROSS_RANKS:
        return full[a:b].clone()
    out = full.new_empty((c, *full.shape[1:]))
    _call(group.dist, "reduce_scatter_single", "reduce_scatter_tensor", out, _padded(full, c * group.world_size))
    return out[: b - a].clone() if b - a < c else out


class _GatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, shard: torch.Tensor, total: int, group: ShardGroup) -> torch.Tensor:  # type: ignore[override]
        ctx.group = group
        full = all_gather_rows(shard, total, group)
        return full.clone() if full is shard else full

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        return _ScatterRows.apply(grad, ctx.group), None, None


class _ScatterRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, full: torch.Tensor, group: ShardGroup) -> torch.Tensor:  # type: ignore[override]
        ctx.group, ctx.total = group, full.shape[0]
        out = reduce_scatter_rows(full.contiguous(), group)
        return out.clone() if out is full else out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        return _GatherRows.apply(grad, ctx.total, ctx.group), None


def gather_rows(shard: torch.Tensor, total: int, group: ShardGroup) -> torch.Tensor:
    """Differentiable all-gather: the full tensor; its backward reduce-scatters (sums) the gradient to the shards."""
    return _GatherRows.apply(shard, total, group)
