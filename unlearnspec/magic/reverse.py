"""The exact MAGIC reverse pass: per-token metagradients dQ(theta_T)/dw of a recorded SGD/Adam/AdamW run.

The adjoint of state T is (grad Q(theta_T), 0, ...). For t = T-1..0 the optimizer's rule
(`optimizers.py`) turns the adjoint of state t+1 into g_bar (the adjoint of step t's gradient) and the
adjoint of state t less H_t g_bar; then scores[B_t] += d<grad L_t(theta_t, w), g_bar>/dw and
theta_bar_t += H_t g_bar, both out of ONE double backward per micro-batch. Plain SGD:
g_bar = -lr_t v_{t+1}, v_t = v_{t+1} - lr_t (H_t v_{t+1} + lambda v_{t+1}).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol, Union

import torch
from torch import nn

from unlearnspec.magic.attention import replay_mode
from unlearnspec.magic.checks import check_model_replayable
from unlearnspec.magic.replay import GridLike, forward_logits, valid_targets
from unlearnspec.train.loss import weighted_token_loss
from unlearnspec.magic.optimizers import clip, clip_adjoint, make_adjoint
from unlearnspec.magic.trajectory import Trajectory, state_key


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
    """Most parameter-sized tensors of states held in RAM at once (kept states in a RAM store plus
    recomputed/loaded ones; an Adam state is three: theta, m, v)."""
    seconds: float = 0.0
    adjoint_gain: float = 0.0
    """max over steps of ||g_bar_t|| / ||theta_bar_{t+1}|| on coordinates some gradient reached (Adam:
    v' > 0): lr for SGD; for Adam ~ lr / (sqrt(v_hat) + eps) of the coordinates that dominate, up to
    lr / eps where tiny second moments do."""
    adjoint_growth: float = 0.0
    """max over steps of ||theta_bar_t|| / ||grad Q(theta_T)||: how much the backward recursion grows the
    parameter adjoint (about 1 when the run is close to linear; it blows up when H_t g_bar feeds the
    huge g_bar of tiny-second-moment coordinates back into theta_bar)."""
    unit_roundoff: float = 0.0
    """Unit roundoff of the compute dtype (2^-24 for float32, 2^-53 for float64)."""
    _first_theta_bar: float = 0.0

    @property
    def rounding_risk(self) -> float:
        """A heuristic: unit roundoff x adjoint_gain x adjoint_growth. Calibrated by
        benchmarks/magic_adam_precision.py: float32-vs-float64 score gaps were <= 1e-2 where it was
        <= 1.2e-5 (toy AdamW at lr 5e-5 and 5e-4, eps 1e-8; lr 2e-3 at eps 1e-5; the tiny test model at
        any lr/eps tried) and 0.75 where it was 7.7e-4 (toy AdamW lr 2e-3, eps 1e-8: the adjoint grew
        x28). `magic_scores` warns above ROUNDING_RISK_WARN."""
        return self.unit_roundoff * self.adjoint_gain * max(self.adjoint_growth, 1.0)


def _norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(tensors, 2.0)), 2.0)


def query_gradient(query: Query, names: list[str], theta: list[torch.Tensor]) -> list[torch.Tensor]:
    """grad Q at theta, accumulated over the query's parts so only one part's graph is alive at a time."""
    params = [p.detach().requires_grad_() for p in theta]
    pdict = dict(zip(names, params))
    parts = query.parts(pdict) if hasattr(query, "parts") else [query(pdict)]  # type: ignore[operator, union-attr]
    total: list[torch.Tensor] | None = None
    for part in parts:
        if part.dim() != 0:
            raise ValueError(f"the query must return a scalar loss (got shape {tuple(part.shape)})")
        grads = list(torch.autograd.grad(part, params, materialize_grads=True))
        total = grads if total is None else torch._foreach_add(total, grads)
    if total is None:
        raise ValueError("the query produced no loss")
    return total


State = list[list[torch.Tensor]]
"""theta followed by the optimizer's tensors (`OptimizerAdjoint.state_names`), each a list ordered like the names."""


class _Replay:
    """Replays steps of one trajectory on one model; all state lists are ordered like `names`."""

    def __init__(self, model: nn.Module, grid: GridLike, trajectory: Trajectory, hessian: bool, stats: ReplayStats,
                 second_moment: bool = True):
        self.model = model
        self.grid = grid
        self.traj = trajectory
        self.hessian = hessian
        self.stats = stats
        self.names = list(trajectory.param_names)
        self.rule = make_adjoint(trajectory.optimizer, trajectory.decays(), second_moment=second_moment)
        self.max_grad_norm = trajectory.optimizer.max_grad_norm
        self.needs_grad = self.rule.needs_grad or self.max_grad_norm is not None
        self.per_state = 1 + len(self.rule.state_names)  # parameter-sized tensors per state
        self.denoms = [self._denominator(t) for t in range(trajectory.total_steps)]
        self._live = 0
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
        return torch.tensor(denom)

    # ------------------------------------------------------------------ state bookkeeping
    def _hold(self, n: int = 1) -> None:
        """Count n more live states; the peak is in parameter-sized copies (theta, m, v each count)."""
        self._live += n
        copies = (self.traj.store.ram_copies + self._live) * self.per_state
        self.stats.peak_state_copies = max(self.stats.peak_state_copies, copies)

    def _release(self, n: int = 1) -> None:
        self._live -= n

    def load(self, step: int, theta_only: bool = False) -> State:
        stored = self.traj.store.get(step)
        if not getattr(self.traj.store, "keeps_in_ram", False):
            self._hold()
        keys = [self.names] + ([] if theta_only else [[state_key(s, n) for n in self.names] for s in self.rule.state_names])
        missing = [k for ks in keys for k in ks if k not in stored]
        if missing:
            raise KeyError(f"state of step {step} lacks {missing[:3]}")
        return [[stored[k] for k in ks] for ks in keys]

    def unload(self, step: int) -> None:
        if not getattr(self.traj.store, "keeps_in_ram", False):
            self._release()

    # ------------------------------------------------------------------ one step forward / backward
    def _batch(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        g = self.grid
        return g.input_ids[rows], g.attention_mask[rows], g.labels[rows]

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
        for rows in self.traj.steps[t].micro_batches:
            g = list(torch.autograd.grad(self._loss(params, rows, self.denoms[t], None), params, materialize_grads=True))
            grad = g if grad is None else torch._foreach_add(grad, g)
        assert grad is not None
        return grad

    def step(self, state: State, t: int) -> State:
        """State t+1 from state t with the recorded optimizer's arithmetic (clipping first, if recorded)."""
        theta, opt_state = state[0], state[1:]
        grad = clip(self.gradient(theta, t), self.max_grad_norm)
        with torch.no_grad():
            theta_new, opt_new = self.rule.step(theta, opt_state, grad, t, self.traj.steps[t].lr)
        self.stats.recomputed_steps += 1
        return [theta_new, *opt_new]

    def _graph(self, params: list[torch.Tensor], rows: torch.Tensor, denom: torch.Tensor, dtype: torch.dtype):
        """(weights, grads with create_graph) of one micro-batch: the first half of a double backward."""
        labels = self.grid.labels[rows]
        weights = torch.ones(labels.shape, dtype=dtype, device=params[0].device, requires_grad=True)
        loss = self._loss(params, rows, denom, weights)
        return weights, torch.autograd.grad(loss, params, create_graph=True, materialize_grads=True)

    def _track_gain(self, g_bar: list[torch.Tensor], theta_bar: list[torch.Tensor]) -> None:
        top, bottom = float(_norm(g_bar)), float(_norm(theta_bar))
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
        kept = None  # one micro-batch: its graph serves both the gradient and the double backward
        grad = None
        if self.needs_grad:
            if len(step.micro_batches) == 1:
                kept = self._graph(params, step.micro_batches[0], denom, scores.dtype)
                grad = [g.detach() for g in kept[1]]
            else:
                grad = self.gradient(theta, t)
        with torch.no_grad():
            clipped = clip(grad, self.max_grad_norm) if grad is not None else None
            g_bar, new_adjoint = self.rule.adjoint(theta, opt_state, clipped, t, step.lr, adjoint)
            if grad is not None:
                g_bar = clip_adjoint(grad, g_bar, self.max_grad_norm)
            self._track_gain(getattr(self.rule, "touched", None) or g_bar, adjoint[0])
        hv: list[torch.Tensor] | None = None
        for rows in step.micro_batches:
            weights, grads = kept if kept is not None else self._graph(params, rows, denom, scores.dtype)
            kept = None
            dot = torch.stack([(g * d).sum() for g, d in zip(grads, g_bar)]).sum()
            inputs = params + [weights] if need_hv else [weights]
            outs = torch.autograd.grad(dot, inputs, materialize_grads=True)
            scores.index_add_(0, rows.to(scores.device), outs[-1].detach())
            if need_hv:
                part = [o.detach() for o in outs[:-1]]
                hv = part if hv is None else torch._foreach_add(hv, part)
        if t > 0:
            if hv is not None:
                torch._foreach_add_(new_adjoint[0], hv)
            adjoint[:] = new_adjoint
        self.stats.reverse_steps += 1

    # ------------------------------------------------------------------ segment strategies
    def reverse_linear(self, a: int, b: int, state_a: State, adjoint: State, scores: torch.Tensor) -> None:
        """Recompute states a+1..b-1 once, keep them, then reverse b-1..a (the `all`/`sqrt` schedules)."""
        states = [state_a]
        for t in range(a, b - 1):
            states.append(self.step(states[-1], t))
            self._hold()
        for t in range(b - 1, a - 1, -1):
            self.reverse_step(states.pop(), adjoint, t, scores)
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
    model: nn.Module,
    grid: GridLike,
    trajectory: Trajectory,
    query: Query,
    *,
    hessian: bool = True,
    second_moment: bool = True,
    dtype: torch.dtype | None = torch.float32,
    stats: ReplayStats | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Per-token scores dQ/dw [N, S] in target alignment (exactly 0 at column 0, pads, ignored labels).

    Computed in the parameters' dtype and returned as `dtype` (None keeps the compute dtype).
    `query(params)` (or `query.parts(params)`, summed) is the query loss at a parameter dict, usually
    `unlearnspec.magic.query.QueryLoss`. The checkpoint schedule, storage and optimizer are the
    trajectory's. `hessian=False` drops the H g_bar term (first-order scores) and `second_moment=False`
    Adam's v-adjoint; both exist for the mutation tests.
    """
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

    with replay_mode(model):
        replay = _Replay(model, grid, trajectory, hessian, stats, second_moment=second_moment)
        (theta_final,) = replay.load(total, theta_only=True)
        compute_dtype, device = theta_final[0].dtype, theta_final[0].device
        query_grad = [g.detach() for g in query_gradient(query, replay.names, theta_final)]
        adjoint: State = [query_grad] + [[torch.zeros_like(g) for g in query_grad] for _ in replay.rule.state_names]
        del theta_final
        replay.unload(total)
        scores = torch.zeros(n, s, dtype=compute_dtype, device=device)
        stats.unit_roundoff = torch.finfo(compute_dtype).eps / 2
        bounds = kept + [total]
        done = 0
        for j in range(len(kept) - 1, -1, -1):
            a, b = bounds[j], bounds[j + 1]
            state_a = replay.load(a)
            if trajectory.schedule == "log":
                replay.reverse_bisect(a, b, state_a, adjoint, scores)
            else:
                replay.reverse_linear(a, b, state_a, adjoint, scores)
            del state_a
            replay.unload(a)
            done += b - a
            if progress is not None:
                progress(done, total)
    stats.seconds = time.perf_counter() - started
    if stats.rounding_risk > ROUNDING_RISK_WARN:
        warnings.warn(rounding_warning(stats, trajectory), stacklevel=2)
    return scores if dtype is None else scores.to(dtype)


ROUNDING_RISK_WARN = 1e-4
"""Warn above this `ReplayStats.rounding_risk` (measured: gaps <= 1e-2 at risk <= 1.2e-5, 0.75 at 7.7e-4)."""


def rounding_warning(stats: ReplayStats, trajectory: Trajectory) -> str:
    opt = trajectory.optimizer
    hint = (f"raise training.optimizer.eps (now {opt.eps:g}) or lower the lr, or compute in float64 (model.dtype)"
            if opt.name != "sgd" else "compute in float64 (model.dtype) or lower the lr")
    return (f"MAGIC: the reverse pass amplifies rounding (adjoint gain {stats.adjoint_gain:.3g}, growth "
            f"x{stats.adjoint_growth:.3g}; rounding risk {stats.rounding_risk:.2g} > {ROUNDING_RISK_WARN:g}): where "
            f"Adam's second moments are small, 1/(sqrt(v)+eps) gives huge effective steps and the metagradient is "
            f"ill-conditioned; float32 scores in such a regime were off by 75% on the toy world. {hint[0].upper() + hint[1:]}; "
            "measure the float32-vs-float64 gap with benchmarks/magic_adam_precision.py.")
