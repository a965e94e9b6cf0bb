"""The exact MAGIC reverse pass: per-token metagradients dQ(theta_T)/dw of a recorded plain-SGD run.

v_T = grad Q(theta_T); for t = T-1..0: scores[B_t] += -lr_t * d<grad L_t(theta_t, w), v_{t+1}>/dw and
v_t = v_{t+1} - lr_t (H_t v_{t+1} + lambda v_{t+1}). Both come out of ONE double backward per
micro-batch: the gradient of <grad L_t, v> with respect to (theta, w) is (H_t v, per-token terms).

Data parallel (several ranks, `collective.TorchDistributed`): every rank holds theta and v, replays its
share of each step's row chunks, and the partial sums (recomputed gradient, H v, query gradient,
scores) are all-reduced, so each token's term is computed once, on the rank that owns its chunk.
Everything the pass creates lives on the model's device; kept states are moved there when loaded.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol, Union

import torch
from torch import nn

from unlearnspec.magic.attention import replay_mode
from unlearnspec.magic.checks import check_model_replayable
from unlearnspec.magic.collective import Alone, Collective, default_collective
from unlearnspec.magic.replay import GridLike, forward_logits, valid_targets
from unlearnspec.train.loss import weighted_token_loss
from unlearnspec.magic.trajectory import Trajectory


class BatchedQuery(Protocol):
    """A query loss given in parts (e.g. one per batch of questions) that sum to Q(params)."""

    def parts(self, params: Mapping[str, torch.Tensor]) -> Iterable[torch.Tensor]: ...


Query = Union[Callable[[Mapping[str, torch.Tensor]], torch.Tensor], BatchedQuery]


@dataclass
class ReplayStats:
    """Cost figures of one reverse pass."""

    reverse_steps: int = 0
    recomputed_steps: int = 0
    peak_state_copies: int = 0
    """Most parameter states held in RAM at once: kept states in a RAM store plus recomputed/loaded ones."""
    seconds: float = 0.0


def query_gradient(query: Query, names: list[str], theta: list[torch.Tensor], comm: Collective | None = None) -> list[torch.Tensor]:
    """grad Q at theta, accumulated over the query's parts so only one part's graph is alive at a time.

    Under several ranks each rank differentiates its share of the parts (`parts(params, rank, world_size)`;
    a plain callable query runs on rank 0) and the partial gradients are all-reduced.
    """
    comm = comm or Alone()
    params = [p.detach().requires_grad_() for p in theta]
    pdict = dict(zip(names, params))
    if hasattr(query, "parts"):
        shard = {"rank": comm.rank, "world_size": comm.world_size} if comm.world_size > 1 else {}
        parts = query.parts(pdict, **shard)  # type: ignore[union-attr]
    else:
        parts = [query(pdict)] if comm.rank == 0 else []  # type: ignore[operator]
    total: list[torch.Tensor] | None = None
    for part in parts:
        if part.dim() != 0:
            raise ValueError(f"the query must return a scalar loss (got shape {tuple(part.shape)})")
        grads = list(torch.autograd.grad(part, params, materialize_grads=True))
        total = grads if total is None else torch._foreach_add(total, grads)
    if total is None and comm.world_size == 1:
        raise ValueError("the query produced no loss")
    if total is None:  # more ranks than query parts: this rank adds nothing
        total = [torch.zeros_like(p) for p in params]
    comm.all_reduce_(total)
    return total


class _Replay:
    """Replays steps of one trajectory on one model; all state lists are ordered like `names`."""

    def __init__(self, model: nn.Module, grid: GridLike, trajectory: Trajectory, hessian: bool, stats: ReplayStats,
                 comm: Collective | None = None, micro_batch_rows: int | None = None, offload_adjoint: bool = False,
                 offload_states: bool = False):
        self.model = model
        self.grid = grid
        self.traj = trajectory
        self.hessian = hessian
        self.stats = stats
        self.comm = comm or Alone()
        self.micro_batch_rows = micro_batch_rows
        self.offload = offload_adjoint
        self.offload_states = offload_states
        self.device = next(model.parameters()).device
        self.names = list(trajectory.param_names)
        self.decays = trajectory.decays()
        self.uniform_decay = self.decays[0] if len(set(self.decays)) == 1 else None
        self.denoms = [self._denominator(t) for t in range(trajectory.total_steps)]
        self._live = 0
        self._held: set[int] = set()
        self._hold(0)

    def _denominator(self, t: int) -> torch.Tensor:
        step = self.traj.steps[t]
        n = self.grid.labels.shape[0]
        for rows in step.micro_batches:
            if rows.min() < 0 or rows.max() >= n:
                raise ValueError(f"step {t} names a row outside the grid of {n} rows")
        denom = sum(int(valid_targets(self.grid.labels[rows])) for rows in step.micro_batches)
        if denom == 0:
            raise ValueError(f"step {t} has no valid target token; the trainer's loss would divide by zero")
        return torch.tensor(denom, device=self.device)

    def chunks(self, t: int) -> list[torch.Tensor]:
        """This rank's row chunks of step t: the recorded micro-batches (re-split into `micro_batch_rows`
        rows when set), dealt round-robin over the ranks, so every row of the step has one owner."""
        micro = self.traj.steps[t].micro_batches
        if self.micro_batch_rows is not None:
            micro = tuple(torch.cat(micro).split(self.micro_batch_rows))
        return list(micro[self.comm.rank::self.comm.world_size])

    def _reduce_hvp(self, hv: list[torch.Tensor]) -> None:
        """Sum the ranks' partial H v (each over its own rows) into the full product, in place."""
        self.comm.all_reduce_(hv)

    # ------------------------------------------------------------------ state bookkeeping
    def _hold(self, n: int = 1) -> None:
        self._live += n
        self.stats.peak_state_copies = max(self.stats.peak_state_copies, self.traj.store.ram_copies + self._live)

    def _release(self, n: int = 1) -> None:
        self._live -= n

    def load(self, step: int, to_device: bool = True) -> list[torch.Tensor]:
        """The kept state of `step`, moved to the model's device unless `to_device` is False."""
        state = self.traj.store.get(step)
        missing = [n for n in self.names if n not in state]
        if missing:
            raise KeyError(f"state of step {step} lacks parameters {missing[:3]}")
        tensors = [state[n] for n in self.names]
        moved = to_device and bool(tensors) and tensors[0].device != self.device  # kept in host RAM or on disk
        if moved:
            tensors = [x.to(self.device) for x in tensors]
        if moved or not getattr(self.traj.store, "keeps_in_ram", False):
            self._hold()  # a new copy, released by unload
            self._held.add(step)
        return tensors

    def unload(self, step: int) -> None:
        if step in self._held:
            self._held.discard(step)
            self._release()

    def on_device(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        return [x.to(self.device) for x in tensors]

    # ------------------------------------------------------------------ one step forward / backward
    def _batch(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        g, dev = self.grid, self.device
        return g.input_ids[rows].to(dev), g.attention_mask[rows].to(dev), g.labels[rows].to(dev)

    def _loss(self, params: list[torch.Tensor], rows: torch.Tensor, denom: torch.Tensor, weights: torch.Tensor | None):
        ids, mask, labels = self._batch(rows)
        logits = forward_logits(self.model, dict(zip(self.names, params)), ids, mask)
        if weights is None:
            weights = torch.ones(labels.shape, dtype=logits.dtype, device=logits.device)
        return weighted_token_loss(logits, labels, weights, denom)

    def _add_decay(self, into: list[torch.Tensor], tensors: list[torch.Tensor]) -> None:
        """into += wd * tensors, per parameter."""
        if self.uniform_decay is not None:
            if self.uniform_decay:
                torch._foreach_add_(into, tensors, alpha=self.uniform_decay)
            return
        for a, b, wd in zip(into, tensors, self.decays):
            if wd:
                a.add_(b, alpha=wd)

    def sgd_step(self, theta: list[torch.Tensor], t: int) -> list[torch.Tensor]:
        """theta_{t+1} from theta_t, with torch.optim.SGD's arithmetic (grad + wd * p, then p - lr * d)."""
        step = self.traj.steps[t]
        params = [p.detach().requires_grad_() for p in theta]
        grad: list[torch.Tensor] | None = None
        for rows in self.chunks(t):
            g = list(torch.autograd.grad(self._loss(params, rows, self.denoms[t], None), params, materialize_grads=True))
            if grad is None:
                grad = g
            else:
                torch._foreach_add_(grad, g)
        if grad is None:  # this rank owns no rows of the step
            grad = [torch.zeros_like(p) for p in theta]
        self.comm.all_reduce_(grad)
        with torch.no_grad():
            self._add_decay(grad, theta)
            out = torch._foreach_add(theta, grad, alpha=-step.lr)
        self.stats.recomputed_steps += 1
        return out

    def reverse_step(self, theta: list[torch.Tensor], v: list[torch.Tensor], t: int, scores: torch.Tensor) -> None:
        """Add step t's per-token terms to `scores` and turn v_{t+1} into v_t in place."""
        step, denom = self.traj.steps[t], self.denoms[t]
        need_hv = self.hessian and t > 0  # v_0 is never used
        params = [p.detach().requires_grad_() for p in theta]
        hv: list[torch.Tensor] | None = None
        v_dev = [x.to(self.device) for x in v] if self.offload else v  # offload: v lives in host RAM between steps
        for rows in self.chunks(t):
            weights = torch.ones(self.grid.labels[rows].shape, dtype=scores.dtype, device=self.device, requires_grad=True)
            loss = self._loss(params, rows, denom, weights)
            grads = torch.autograd.grad(loss, params, create_graph=True, materialize_grads=True)
            dot = torch.stack([(g * d).sum() for g, d in zip(grads, v_dev)]).sum()
            del grads  # v needs no gradient, so the graph does not keep them: one parameter-sized buffer less
            inputs = params + [weights] if need_hv else [weights]
            outs = torch.autograd.grad(dot, inputs, materialize_grads=True)
            scores.index_add_(0, rows.to(self.device), outs[-1].detach(), alpha=-step.lr)
            if need_hv:
                part = [o.detach().to(v[0].device) for o in outs[:-1]]
                if hv is None:
                    hv = part
                else:
                    torch._foreach_add_(hv, part)
            del outs
        del v_dev
        if need_hv:
            if hv is None:  # this rank owns no rows of the step: it adds nothing to H v
                hv = [torch.zeros_like(x) for x in v]
            self._reduce_hvp(hv)
        if t > 0:
            with torch.no_grad():
                if hv is None:  # hessian=False: only the weight-decay part of the adjoint update
                    hv = [torch.zeros_like(x) for x in v]
                self._add_decay(hv, v)
                torch._foreach_add_(v, hv, alpha=-step.lr)
        self.stats.reverse_steps += 1

    # ------------------------------------------------------------------ segment strategies
    def reverse_linear(self, a: int, b: int, theta_a: list[torch.Tensor], v: list[torch.Tensor], scores: torch.Tensor) -> None:
        """Recompute theta_{a+1..b-1} once, keep them, then reverse b-1..a (the `all`/`sqrt` schedules)."""
        # offload_states: theta_a may arrive in host RAM; every state is on the device only while it is used.
        states, current = [theta_a], self.on_device(theta_a)
        for t in range(a, b - 1):
            current = self.sgd_step(current, t)
            states.append([x.cpu() for x in current] if self.offload_states else current)
            self._hold()
        del current
        for t in range(b - 1, a - 1, -1):
            theta = self.on_device(states.pop())
            self.reverse_step(theta, v, t, scores)
            del theta
            if t > a:
                self._release()

    def reverse_bisect(self, a: int, b: int, theta_a: list[torch.Tensor], v: list[torch.Tensor], scores: torch.Tensor) -> None:
        """Recursive halving (the `log` schedule): O(log) live states, O(n log n) recomputed steps."""
        if b - a == 1:
            self.reverse_step(theta_a, v, a, scores)
            return
        mid = (a + b) // 2
        theta = theta_a
        for t in range(a, mid):
            nxt = self.sgd_step(theta, t)
            if theta is not theta_a:
                self._release()
            theta = nxt
            self._hold()
        self.reverse_bisect(mid, b, theta, v, scores)
        del theta
        self._release()
        self.reverse_bisect(a, mid, theta_a, v, scores)


def magic_scores(
    model: nn.Module,
    grid: GridLike,
    trajectory: Trajectory,
    query: Query,
    *,
    hessian: bool = True,
    dtype: torch.dtype | None = torch.float32,
    stats: ReplayStats | None = None,
    progress: Callable[[int, int], None] | None = None,
    comm: Collective | None = None,
    micro_batch_rows: int | None = None,
    offload_adjoint: bool = False,
    offload_states: bool = False,
) -> torch.Tensor:
    """Per-token scores dQ/dw [N, S] in target alignment (exactly 0 at column 0, pads, ignored labels).

    Computed in the parameters' dtype and returned as `dtype` (None keeps the compute dtype).
    `query(params)` (or `query.parts(params)`, summed) is the query loss at a parameter dict, usually
    `unlearnspec.magic.query.QueryLoss`. The checkpoint schedule and storage are the trajectory's.
    `hessian=False` drops the H v term (first-order scores); it exists for the mutation test.

    `comm` (default: the torch.distributed group when one with several ranks exists) splits each step's
    rows over the ranks; every rank returns the same full score matrix (rank 0 writes it).
    `micro_batch_rows` re-splits each step's rows into double backwards of that many rows (memory knob;
    unset: the recorded micro-batches). `offload_adjoint` keeps v and the H v accumulator in host RAM;
    `offload_states` keeps the states a `sqrt`/`all` segment recomputes in host RAM (else up to ceil(sqrt T)
    parameter copies sit on the device during a segment).
    """
    stats = stats if stats is not None else ReplayStats()
    started = time.perf_counter()
    check_model_replayable(model, trajectory.param_names)
    n, s = grid.labels.shape
    if grid.input_ids.shape != (n, s) or grid.attention_mask.shape != (n, s):
        raise ValueError("input_ids, attention_mask and labels must all be [N, S]")
    total = trajectory.total_steps
    kept = [k for k in trajectory.store.steps() if k < total]
    if not kept or kept[0] != 0 or total not in trajectory.store.steps():
        raise ValueError("the trajectory must hold theta_0 and theta_T; record with TrajectoryRecorder")

    comm = comm if comm is not None else default_collective()
    if micro_batch_rows is not None and micro_batch_rows < 1:
        raise ValueError(f"micro_batch_rows must be >= 1 (got {micro_batch_rows})")
    comm.barrier()  # states written by rank 0 (disk storage) are complete before any rank reads them
    with replay_mode(model):
        replay = _Replay(model, grid, trajectory, hessian, stats, comm, micro_batch_rows, offload_adjoint, offload_states)
        theta_final = replay.load(total)
        compute_dtype = theta_final[0].dtype
        v = [g.detach() for g in query_gradient(query, replay.names, theta_final, comm)]
        if offload_adjoint:
            v = [x.cpu() for x in v]
        del theta_final
        replay.unload(total)
        scores = torch.zeros(n, s, dtype=compute_dtype, device=replay.device)
        bounds = kept + [total]
        done = 0
        for j in range(len(kept) - 1, -1, -1):
            a, b = bounds[j], bounds[j + 1]
            theta_a = replay.load(a, to_device=trajectory.schedule == "log" or not offload_states)
            if trajectory.schedule == "log":
                replay.reverse_bisect(a, b, theta_a, v, scores)
            else:
                replay.reverse_linear(a, b, theta_a, v, scores)
            del theta_a
            replay.unload(a)
            done += b - a
            if progress is not None:
                progress(done, total)
        comm.all_reduce_([scores])  # each (row, step) term was added on exactly one rank
    stats.seconds = time.perf_counter() - started
    return scores if dtype is None else scores.to(dtype)
