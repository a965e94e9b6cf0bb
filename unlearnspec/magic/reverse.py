"""The exact MAGIC reverse pass: per-token metagradients dQ(theta_T)/dw of a recorded SGD/Adam/AdamW run.

The adjoint of state T is (grad Q(theta_T), 0, ...). For t = T-1..0 the optimizer's rule
(`optimizers.py`) turns the adjoint of state t+1 into g_bar (the adjoint of step t's gradient) and the
adjoint of state t less H_t g_bar; then scores[B_t] += d<grad L_t(theta_t, w), g_bar>/dw and
theta_bar_t += H_t g_bar, both out of ONE double backward per micro-batch. Plain SGD:
g_bar = -lr_t v_{t+1}, v_t = v_{t+1} - lr_t (H_t v_{t+1} + lambda v_{t+1}).

Data parallel (several ranks, `collective.TorchDistributed`): every rank holds the state and its adjoint,
replays its share of each step's row chunks, and the partial sums (recomputed gradient, H g_bar, query
gradient, scores) are all-reduced, so each token's term is computed once, on the rank that owns its chunk.
Everything the pass creates lives on the model's device; kept states are moved there when loaded.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn
from typing_extensions import Unpack

from unlearnspec.magic.attention import replay_mode
from unlearnspec.magic.batched import adjoint_dots, double_backward
from unlearnspec.magic.checks import check_model_replayable
from unlearnspec.magic.collective import Alone, Collective, default_collective
from unlearnspec.magic.optimizers import Reduce, clip, clip_adjoint, grad_norm, make_adjoint
from unlearnspec.magic.query_grad import BatchedQuery, Query, query_gradient  # noqa: F401 - re-exported
from unlearnspec.magic.replay import GridLike, forward_logits, valid_targets
from unlearnspec.magic.replay_options import ReplayOptions, check_replay_options
from unlearnspec.magic.replay_state import State, StateKeeping
from unlearnspec.magic.replay_stats import ROUNDING_RISK_WARN, ReplayStats, rounding_warning  # noqa: F401 - ReplayStats re-exported
from unlearnspec.magic.trajectory import Trajectory
from unlearnspec.train.loss import weighted_token_loss


class _Replay(StateKeeping):
    """Replays steps of one trajectory on one model; all state lists are ordered like `names`."""

    def __init__(self, model: nn.Module, grid: GridLike, trajectory: Trajectory, **options: Unpack[ReplayOptions]):
        self.model = model
        self.grid = grid
        self.traj = trajectory
        self.hessian = options.get("hessian", True)
        stats, comm = options.get("stats"), options.get("comm")
        self.stats = stats if stats is not None else ReplayStats()
        self.comm = comm if comm is not None else Alone()
        self.micro_batch_rows = options.get("micro_batch_rows")
        self.offload = options.get("offload_adjoint", False)
        self.offload_states = options.get("offload_states", False)
        self.device = next(model.parameters()).device
        self.names = list(trajectory.param_names)
        self.weights: torch.Tensor | None = None
        """Per-token weights [N, S] of the forward steps (`step`); None = 1 on every token (the recorded run)."""
        self.rule = make_adjoint(
            trajectory.optimizer, trajectory.decays(), second_moment=options.get("second_moment", True)
        )
        self.max_grad_norm = trajectory.optimizer.max_grad_norm
        self.needs_grad = self.rule.needs_grad or self.max_grad_norm is not None
        self.per_state = 1 + len(self.rule.state_names)  # parameter-sized tensors per state
        self.denoms = [self._denominator(t) for t in range(trajectory.total_steps)]
        self.reduce: Reduce = None
        """Sums norms and dot products over the ranks when each holds a shard (`sharded.ShardedReplay`)."""
        self.batched_loop = False
        """Double-backward K batched adjoints one by one (the sharded pass) instead of vmapped."""
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
        return list(micro[self.comm.rank :: self.comm.world_size])

    def slots(self, t: int) -> list[tuple[torch.Tensor, bool]]:
        """(rows, owned) of every forward this rank runs for step t; a rank that runs a forward with no rows
        of its own (owned False: zero weights) keeps the ranks' collectives in step (`sharded.py`)."""
        return [(rows, True) for rows in self.chunks(t)]

    def _one_graph(self, slots: list[tuple[torch.Tensor, bool]]) -> bool:
        """Whether the step's gradient is the gradient of this rank's only graph (then it is reused)."""
        return len(slots) == 1 and self.comm.world_size == 1

    def _sum_gradient(self, grad: list[torch.Tensor]) -> None:
        """Sum the ranks' partial gradients (each over its own rows) in place."""
        self.comm.all_reduce_(grad)

    def _reduce_hvp(self, hv: list[torch.Tensor]) -> None:
        """Sum the ranks' partial H v (each over its own rows) into the full product, in place."""
        self.comm.all_reduce_(hv)

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

    def gradient(self, theta: list[torch.Tensor], t: int) -> list[torch.Tensor]:
        """grad L_t(theta) summed over the step's micro-batches (first order, nothing retained)."""
        params = [p.detach().requires_grad_() for p in theta]
        grad: list[torch.Tensor] | None = None
        for rows, owned in self.slots(t):
            w = self.weights[rows].to(self.device) if owned and self.weights is not None else None
            if not owned:
                w = torch.zeros(rows.shape[0], self.grid.labels.shape[1], dtype=theta[0].dtype, device=self.device)
            g = list(torch.autograd.grad(self._loss(params, rows, self.denoms[t], w), params, materialize_grads=True))
            grad = g if grad is None else list(torch._foreach_add(grad, g))
        if grad is None:  # this rank owns no rows of the step
            grad = [torch.zeros_like(p) for p in theta]
        self._sum_gradient(grad)
        return grad

    def step(self, state: State, t: int) -> State:
        """State t+1 from state t with the recorded optimizer's arithmetic (clipping first, if recorded)."""
        theta, opt_state = state[0], state[1:]
        grad = clip(self.gradient(theta, t), self.max_grad_norm, self.reduce)
        with torch.no_grad():
            theta_new, opt_new = self.rule.step(theta, opt_state, grad, t, self.traj.steps[t].lr)
        self.stats.recomputed_steps += 1
        return [theta_new, *opt_new]

    def _graph(
        self,
        params: list[torch.Tensor],
        rows: torch.Tensor,
        denom: torch.Tensor,
        dtype: torch.dtype,
        owned: bool = True,
    ):
        """(weights, grads with create_graph) of one micro-batch: the first half of a double backward (weights 0
        on a slot the rank does not own)."""
        labels = self.grid.labels[rows]
        fill = torch.ones if owned else torch.zeros
        weights = fill(labels.shape, dtype=dtype, device=params[0].device, requires_grad=True)
        loss = self._loss(params, rows, denom, weights)
        return weights, torch.autograd.grad(loss, params, create_graph=True, materialize_grads=True)

    def _track_gain(self, g_bar: list[torch.Tensor], theta_bar: list[torch.Tensor]) -> None:
        if not g_bar or g_bar[0].device.type == "meta":  # shape-only runs (device tests) have no values
            return
        top, bottom = float(grad_norm(g_bar, self.reduce)), float(grad_norm(theta_bar, self.reduce))
        st = self.stats
        if not st._first_theta_bar:
            st._first_theta_bar = bottom
        if bottom > 0:
            st.adjoint_gain = max(st.adjoint_gain, top / bottom)
            st.adjoint_growth = max(st.adjoint_growth, bottom / st._first_theta_bar)

    def reverse_step(self, state: State, adjoint: State, t: int, scores: torch.Tensor) -> None:
        """Add step t's per-token terms to `scores` and turn the adjoint of state t+1 into that of state t
        (in place). One double backward per micro-batch gives H_t g_bar and d<grad L_t, g_bar>/dw."""
        step, denom = self.traj.steps[t], self.denoms[t]
        theta, opt_state = state[0], state[1:]
        need_hv = self.hessian and t > 0  # the adjoint of state 0 is never used
        params = [p.detach().requires_grad_() for p in theta]
        slots = self.slots(t)
        kept = None  # one graph per rank holding the whole step: it serves both the gradient and the double backward
        grad = None
        if self.needs_grad:
            if self._one_graph(slots):
                kept = self._graph(params, slots[0][0], denom, scores.dtype, slots[0][1])
                grad = [g.detach() for g in kept[1]]
            else:
                grad = self.gradient(theta, t)  # summed over the ranks
        host = adjoint[0][0].device if adjoint and adjoint[0] else self.device
        if self.offload:  # offload_adjoint: the adjoint lives in host RAM between steps
            adjoint[:] = self.on_device(adjoint)
        with torch.no_grad():
            clipped = clip(grad, self.max_grad_norm, self.reduce) if grad is not None else None
            g_bar, new_adjoint = self.rule.adjoint(theta, opt_state, clipped, t, step.lr, adjoint)
            if grad is not None:
                g_bar = clip_adjoint(grad, g_bar, self.max_grad_norm, self.reduce)
            self._track_gain(getattr(self.rule, "touched", None) or g_bar, adjoint[0])
        hv: list[torch.Tensor] | None = None
        for rows, owned in slots:
            weights, grads = kept if kept is not None else self._graph(params, rows, denom, scores.dtype, owned)
            kept = None
            dot = adjoint_dots(grads, g_bar)  # <grad L_t, g_bar>: a scalar, or [K] for K batched adjoints
            del grads  # g_bar needs no gradient, so the graph does not keep them: one parameter-sized buffer less
            inputs = params + [weights] if need_hv else [weights]
            outs = double_backward(dot, inputs, loop=self.batched_loop)
            if owned:
                scores.index_add_(scores.dim() - 2, rows.to(scores.device), outs[-1].detach())
            if need_hv:
                part = [o.detach() for o in outs[:-1]]
                if hv is None:
                    hv = part
                else:
                    torch._foreach_add_(hv, part)
            del outs
        del g_bar
        if need_hv:
            if hv is None:  # this rank owns no rows of the step: it adds nothing to H g_bar
                hv = [torch.zeros_like(x) for x in theta]
            self._reduce_hvp(hv)
        if t > 0:
            if hv is not None:
                torch._foreach_add_(new_adjoint[0], hv)
            adjoint[:] = new_adjoint
        if self.offload:
            adjoint[:] = [[x.to(host) for x in xs] for xs in adjoint]
        self.stats.reverse_steps += 1

    # ------------------------------------------------------------------ segment strategies
    def reverse_linear(self, a: int, b: int, state_a: State, adjoint: State, scores: torch.Tensor) -> None:
        """Recompute states a+1..b-1 once, keep them, then reverse b-1..a (the `all`/`sqrt` schedules).
        offload_states: state_a may arrive in host RAM; every state is on the device only while it is used."""
        states, current = [state_a], self.on_device(state_a)
        for t in range(a, b - 1):
            current = self.step(current, t)
            states.append(self.to_host(current) if self.offload_states else current)
            self._hold()
        del current
        for t in range(b - 1, a - 1, -1):
            state = self.on_device(states.pop())
            self.reverse_step(state, adjoint, t, scores)
            del state
            if t > a:
                self._release()

    def reverse_bisect(self, a: int, b: int, state_a: State, adjoint: State, scores: torch.Tensor) -> None:
        """Recursive halving (the `log` schedule): O(log) live states, O(n log n) recomputed steps."""
        if b - a == 1:
            self.reverse_step(state_a, adjoint, a, scores)
            return
        mid = (a + b) // 2
        state = state_a
        for t in range(a, mid):
            nxt = self.step(state, t)
            if state is not state_a:
                self._release()
            state = nxt
            self._hold()
        self.reverse_bisect(mid, b, state, adjoint, scores)
        del state
        self._release()
        self.reverse_bisect(a, mid, state_a, adjoint, scores)


def magic_scores(
    model: nn.Module, grid: GridLike, trajectory: Trajectory, query: Query, **replay: Unpack[ReplayOptions]
) -> torch.Tensor:
    """Per-token scores dQ/dw [N, S] in target alignment (exactly 0 at column 0, pads, ignored labels).

    Computed in the parameters' dtype and returned as `replay["dtype"]` (default float32; None keeps the compute
    dtype). `query(params)` (or `query.parts(params)`, summed) is the query loss at a parameter dict, usually
    `unlearnspec.magic.query.QueryLoss`. The checkpoint schedule, storage and optimizer are the trajectory's.

    The keywords (`ReplayOptions`): `hessian=False` drops the H g_bar term (first-order scores) and
    `second_moment=False` Adam's v-adjoint; both exist for the mutation tests. `comm` (default: the
    torch.distributed group when one with several ranks exists) splits each step's rows over the ranks; every
    rank returns the same full score matrix (rank 0 writes it). `micro_batch_rows` re-splits each step's rows
    into double backwards of that many rows (memory knob; unset: the recorded micro-batches). `offload_adjoint`
    keeps the adjoint and the H g_bar accumulator in host RAM between steps; `offload_states` keeps the states a
    `sqrt`/`all` segment recomputes in host RAM (else up to ceil(sqrt T) states sit on the device during a
    segment). `stats` receives the pass's diagnostics, `progress(done, total)` its reverse steps.
    """
    start = lambda names, final, c: [query_gradient(query, names, final(), c)]  # noqa: E731
    (scores,) = reverse_passes(model, grid, trajectory, start, **replay)
    return scores


StartAdjoints = Callable[[list[str], Callable[[], list[torch.Tensor]], Collective], Iterable[list[torch.Tensor]]]
"""(names, a loader of theta_T, comm) -> the starting adjoints, one pass each: per-parameter tensors shaped like the
parameters (one query) or [K, *shape] (K batched queries, see `batched.py`). A generator: the next start is
computed only when the previous pass is done, so one chunk's adjoints are alive at a time."""


def reverse_passes(
    model: nn.Module,
    grid: GridLike,
    trajectory: Trajectory,
    starts: StartAdjoints,
    *,
    on_host: bool = False,
    **replay: Unpack[ReplayOptions],
) -> Iterator[torch.Tensor]:
    """One reverse pass per starting adjoint of `starts` (see `magic_scores` for the `replay` keywords), yielding
    each pass's scores as `replay["dtype"]` (default float32; None: the compute dtype): [N, S], or [K, N, S] for a
    batched start (on the CPU when `on_host`). `progress(done, total)` counts reverse steps over all passes so far."""
    check_replay_options(replay)
    stats = replay.get("stats")
    stats = stats if stats is not None else ReplayStats()
    stats._first_theta_bar = 0.0
    started = time.perf_counter()
    check_model_replayable(model, trajectory.param_names)
    n, s = grid.labels.shape
    if grid.input_ids.shape != (n, s) or grid.attention_mask.shape != (n, s):
        raise ValueError("input_ids, attention_mask and labels must all be [N, S]")
    total = trajectory.total_steps
    kept = [k for k in trajectory.store.steps() if k < total]
    if not kept or kept[0] != 0 or total not in trajectory.store.steps():
        raise ValueError("the trajectory must hold theta_0 and theta_T; record with TrajectoryRecorder")

    comm = replay.get("comm")
    comm = comm if comm is not None else default_collective()
    micro_batch_rows, progress = replay.get("micro_batch_rows"), replay.get("progress")
    dtype = replay.get("dtype", torch.float32)
    if micro_batch_rows is not None and micro_batch_rows < 1:
        raise ValueError(f"micro_batch_rows must be >= 1 (got {micro_batch_rows})")
    comm.barrier()  # states written by rank 0 (disk storage) are complete before any rank reads them
    done = 0
    with replay_mode(model):
        kind = getattr(comm, "replay_class", _Replay)  # `sharded.ShardedReplay` when the ranks hold shards (FSDP)
        replayer = kind(model, grid, trajectory, **(replay | {"stats": stats, "comm": comm}))
        first = dict(model.named_parameters())[replayer.names[0]]  # its shape tells a batched start ([K, *shape])

        def final() -> list[torch.Tensor]:
            return replayer.load(total, theta_only=True)[0]

        for start in starts(replayer.names, final, comm):
            replayer.unload(total)  # theta_T was needed only for the start
            query_grad = [g.detach() for g in start]
            compute_dtype = query_grad[0].dtype
            stats.unit_roundoff = torch.finfo(compute_dtype).eps / 2
            adjoint: State = [query_grad] + [
                [torch.zeros_like(g) for g in query_grad] for _ in replayer.rule.state_names
            ]
            del start, query_grad
            if replayer.offload:  # offload_adjoint
                adjoint = replayer.to_host(adjoint)
            batch = tuple(adjoint[0][0].shape[:1]) if adjoint[0][0].dim() > first.dim() else ()
            scores = torch.zeros(*batch, n, s, dtype=compute_dtype, device=replayer.device)
            bounds = kept + [total]
            for j in range(len(kept) - 1, -1, -1):
                a, b = bounds[j], bounds[j + 1]
                state_a = replayer.load(a, to_device=trajectory.schedule == "log" or not replayer.offload_states)
                if trajectory.schedule == "log":
                    replayer.reverse_bisect(a, b, state_a, adjoint, scores)
                else:
                    replayer.reverse_linear(a, b, state_a, adjoint, scores)
                del state_a
                replayer.unload(a)
                done += b - a
                if progress is not None:
                    progress(done, total)
            del adjoint
            comm.all_reduce_([scores])  # each (row, step) term was added on exactly one rank
            stats.seconds = time.perf_counter() - started
            if dtype is not None:
                scores = scores.to(dtype)
            yield scores.cpu() if on_host else scores
    if stats.rounding_risk > ROUNDING_RISK_WARN:
        warnings.warn(rounding_warning(stats, trajectory), stacklevel=2)
