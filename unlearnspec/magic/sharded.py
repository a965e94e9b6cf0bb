"""The exact MAGIC reverse pass with the parameters sharded over the ranks (FSDP `full_shard`).

Every parameter-sized tensor of the pass is a row shard (`shard_ops`): theta_t, Adam's m and v, the kept and
recomputed states, the adjoint (theta_bar, m_bar, v_bar), g_bar and H g_bar, so a rank holds 1/W of each. The
optimizer rules are elementwise and run on the shards unchanged; clipping's norm and dot product are summed
over the ranks. The forward runs on a parameter-free skeleton that all-gathers each module's parameters as it
runs (`sharded_model`). Each rank replays its own rows of a step (the recorded micro-batches dealt round-robin,
as under DDP): its first backward reduce-scatters, so the gradient shard it gets is the sum over every rank's
rows; the double backward of <grad, g_bar> all-gathers g_bar into each rank's graph and reduce-scatters H g_bar,
so H g_bar is summed over the ranks inside the collectives and each rank's weights get its own rows' scores.
Every rank runs the same number of forwards per step (a rank short of rows runs one with zero weights, whose
terms are 0), so the collectives stay in step. K batched adjoints are double-backwarded one after the other.

Use: `skeleton, comm = shard_for_replay(model)`, then `magic_scores(skeleton, grid, trajectory,
rebind_query(query, skeleton), comm=comm)` (or `per_question_scores`, `per_task_scores` alike). The trajectory
holds this rank's shards (recorded under FSDP, `Trajectory.shard_world` = W) or whole states (one process or
DDP), which each rank then slices.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Optional

import torch
from torch import nn
from typing_extensions import Unpack

from unlearnspec.magic.collective import Alone, Collective, TorchDistributed
from unlearnspec.magic.replay import GridLike
from unlearnspec.magic.replay_options import ReplayOptions
from unlearnspec.magic.reverse import State, _Replay
from unlearnspec.magic.shard_ops import ShardGroup
from unlearnspec.magic.sharded_model import SHARDED_ATTR, ShardedForward, build_skeleton
from unlearnspec.magic.trajectory import Params, Trajectory, plain_name


class ShardedCollective:
    """The ranks of a sharded reverse pass: all-reduce for the score matrix, the skeleton's forward, and the
    replay class `reverse_passes` uses (`ShardedReplay`, set below)."""

    sharded = True
    replay_class: type = _Replay

    def __init__(self, forward: ShardedForward, base: Optional[Collective] = None):
        self.forward = forward
        self.group = forward.group
        self.base: Collective = (
            base if base is not None else (TorchDistributed() if self.group.world_size > 1 else Alone())
        )
        self.rank = self.group.rank
        self.world_size = self.group.world_size

    def all_reduce_(self, tensors: list[torch.Tensor]) -> None:
        self.base.all_reduce_(tensors)

    def barrier(self) -> None:
        self.base.barrier()


def default_group() -> ShardGroup:
    """The torch.distributed group when one with several ranks exists, else one rank."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return ShardGroup(dist.get_rank(), dist.get_world_size(), dist)
    return ShardGroup(0, 1)


def shard_for_replay(model: nn.Module, group: Optional[ShardGroup] = None) -> tuple[nn.Module, ShardedCollective]:
    """(skeleton, comm) for a sharded reverse pass of `model` (plain or FSDP2-sharded; its parameters are not read)."""
    group = group or default_group()
    shapes = {plain_name(name): tuple(p.shape) for name, p in model.named_parameters()}  # a DTensor's: the global shape
    skeleton = build_skeleton(model)
    return skeleton, ShardedCollective(ShardedForward(skeleton, shapes, group))


@contextmanager
def parked(tensors: Iterable[torch.Tensor], force: bool = False) -> Iterator[int]:
    """Free the device memory of `tensors` during the block (the trained model's shards and the optimizer's m and
    v, which the sharded pass never reads: it replays the recorded states) and restore them bit for bit after.
    Each storage is copied to host RAM and resized to 0 bytes. Tensors already in host RAM are left alone unless
    `force` (tests). Yields the bytes freed."""
    saved: list[tuple[Any, Any]] = []
    seen: set[int] = set()
    for t in tensors:
        local = t.to_local() if hasattr(t, "to_local") else t
        storage = local.untyped_storage()
        if (storage.device.type == "cpu" and not force) or storage.nbytes() == 0 or storage.data_ptr() in seen:
            continue
        seen.add(storage.data_ptr())
        saved.append((storage, storage.cpu() if storage.device.type != "cpu" else storage.clone()))
    for storage, _ in saved:
        storage.resize_(0)
    try:
        yield sum(host.nbytes() for _, host in saved)
    finally:
        for storage, host in saved:
            storage.resize_(host.nbytes())
            storage.copy_(host)


def trained_tensors(model: nn.Module, optimizer: Any = None) -> list[torch.Tensor]:
    """The trained model's parameters and its optimizer's per-parameter tensors (what `parked` frees)."""
    out: list[torch.Tensor] = list(model.parameters())
    inner = getattr(optimizer, "optimizer", optimizer)
    for state in getattr(inner, "state", {}).values():
        out += [v for v in state.values() if isinstance(v, torch.Tensor) and v.dim() > 0]
    return out


def rebind_query(query: Any, skeleton: nn.Module) -> Any:
    """The query evaluated through the skeleton (a `QueryLoss` holds the model it runs)."""
    if not hasattr(query, "model"):
        return query
    bound = copy.copy(query)
    bound.model = skeleton
    return bound


class _ShardView:
    """A store of whole states read as this rank's row shards (a one-process or DDP trajectory replayed sharded: each
    read loads the whole state first, so only an FSDP-recorded trajectory keeps host memory at 1/W)."""

    keeps_in_ram = False

    def __init__(self, store: Any, group: ShardGroup):
        self.store, self.group = store, group

    def get(self, step: int) -> Params:
        return {k: self.group.shard(v).clone() for k, v in self.store.get(step).items()}

    def steps(self) -> list[int]:
        return self.store.steps()

    def put(self, step: int, params: Mapping[str, torch.Tensor]) -> None:
        raise RuntimeError("a sharded view of a trajectory is read-only")

    @property
    def ram_copies(self) -> int:
        return self.store.ram_copies


class ShardedReplay(_Replay):
    """`reverse._Replay` on row shards; chosen by `reverse_passes` for a `ShardedCollective`."""

    def __init__(self, model: nn.Module, grid: GridLike, trajectory: Trajectory, **options: Unpack[ReplayOptions]):
        fwd: ShardedForward | None = getattr(model, SHARDED_ATTR, None)
        if fwd is None or not getattr(options.get("comm"), "sharded", False):
            raise ValueError("the sharded reverse pass needs the skeleton and comm of shard_for_replay(model)")
        world = fwd.group.world_size
        if trajectory.shard_world not in (1, world):
            raise ValueError(
                f"the trajectory holds shards of {trajectory.shard_world} ranks; replay it on {trajectory.shard_world} "
                f"ranks (this run has {world})"
            )
        if trajectory.shard_world == 1 and world > 1:
            trajectory = dataclasses.replace(trajectory, store=_ShardView(trajectory.store, fwd.group))
        super().__init__(model, grid, trajectory, **options)
        self.fwd = fwd
        self.group = fwd.group
        self.reduce = self.group.sum_
        self.batched_loop = True

    def slots(self, t: int) -> list[tuple[torch.Tensor, bool]]:
        micro = self.traj.steps[t].micro_batches
        if self.micro_batch_rows is not None:
            micro = tuple(torch.cat(micro).split(self.micro_batch_rows))
        mine = list(micro[self.comm.rank :: self.comm.world_size])
        depth = math.ceil(len(micro) / self.comm.world_size)
        return [(rows, True) for rows in mine] + [(micro[0][:1], False)] * (depth - len(mine))

    def _one_graph(self, slots: list[tuple[torch.Tensor, bool]]) -> bool:
        return len(slots) == 1  # the reduce-scatter already summed the one slot of every rank: the step's gradient

    def _sum_gradient(self, grad: list[torch.Tensor]) -> None:
        return None  # summed by the reduce-scatter of the first backward

    def _reduce_hvp(self, hv: list[torch.Tensor]) -> None:
        return None  # summed by the reduce-scatter of the double backward

    def gradient(self, theta: list[torch.Tensor], t: int) -> list[torch.Tensor]:
        with self.fwd.saving():
            return super().gradient(theta, t)

    def reverse_step(self, state: State, adjoint: State, t: int, scores: torch.Tensor) -> None:
        with self.fwd.saving():
            super().reverse_step(state, adjoint, t, scores)


def sharded_magic_scores(
    model: nn.Module,
    grid: GridLike,
    trajectory: Trajectory,
    query: Any,
    group: Optional[ShardGroup] = None,
    **replay: Unpack[ReplayOptions],
) -> torch.Tensor:
    """`magic_scores` with the parameters sharded over the ranks of `group` (default: the process group); `replay`:
    the keywords of `magic_scores` but `comm` (the sharded one)."""
    from unlearnspec.magic.reverse import magic_scores

    skeleton, comm = shard_for_replay(model, group)
    return magic_scores(skeleton, grid, trajectory, rebind_query(query, skeleton), **(replay | {"comm": comm}))


ShardedCollective.replay_class = ShardedReplay
