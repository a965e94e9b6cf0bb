"""The optimizer of a recorded run as a replayable step and its adjoint: SGD, Adam, AdamW, clipping.

The reverse pass (`reverse.py`) is written once against `OptimizerAdjoint`: a state is theta plus the
optimizer's own tensors (`state_names`), an adjoint has one list per state tensor, and each rule says
how one step maps (theta, state, grad) forward and (adjoint of the step's outputs) backward to the
adjoint of the gradient g_bar and of the step's inputs (less H_t g_bar, which one double backward
adds). Gradient clipping (`max_grad_norm`, torch.nn.utils.clip_grad_norm_) wraps any rule.

OPTIMIZERS (below the rules) is the one place that names each optimizer with its torch class, its adjoint, the state
the recorder keeps and the hyperparameters the checks compare: a new optimizer is a rule and one entry there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Optional, Protocol

import torch

from unlearnspec.magic.adam import AdamHyper, AdamState, AdamStep, adam_adjoint, adam_step
from unlearnspec.magic.batched import adjoint_dots
from unlearnspec.spec.training import OptimizerName

Tensors = list[torch.Tensor]
CLIP_EPS = 1e-6
"""torch.nn.utils.clip_grad_norm_ divides by (total_norm + 1e-6)."""


@dataclass(frozen=True)
class OptimizerConfig:
    """What the replay needs to know about the run's optimizer (per-parameter decay lives in the trajectory)."""

    name: OptimizerName = "sgd"
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam betas."""
    eps: float = 1e-8
    """Adam epsilon."""
    initial_step: int = 0
    """The optimizer's step count before step 0 of the trajectory (0 for a fresh optimizer)."""
    max_grad_norm: Optional[float] = None
    """Clip the summed gradient to this L2 norm before each step, as the HF Trainer does; None = no clipping."""

    @property
    def state_names(self) -> tuple[str, ...]:
        """Names of the optimizer's per-parameter tensors a kept state stores next to theta."""
        return OPTIMIZERS[self.name].state_names

    @property
    def hyper(self) -> AdamHyper:
        return AdamHyper(tuple(self.betas), self.eps, decoupled=OPTIMIZERS[self.name].decoupled)  # type: ignore[arg-type]


class OptimizerAdjoint(Protocol):
    """One optimizer's step and its adjoint; all lists are ordered like the trajectory's parameter names."""

    state_names: tuple[str, ...]
    needs_grad: bool
    """True when g_bar depends on the gradient itself (Adam, clipping): the reverse step computes g first."""

    def step(
        self, theta: Tensors, state: list[Tensors], grad: Tensors, t: int, lr: float
    ) -> tuple[Tensors, list[Tensors]]:
        """(theta_{t+1}, state_{t+1}); inputs are not modified."""
        ...

    def adjoint(
        self, theta: Tensors, state: list[Tensors], grad: Optional[Tensors], t: int, lr: float, adjoint: list[Tensors]
    ) -> tuple[Tensors, list[Tensors]]:
        """(g_bar, adjoint of (theta_t, state_t) without H_t g_bar) from `adjoint` of (theta_{t+1}, state_{t+1})."""
        ...


class SGDAdjoint:
    """torch.optim.SGD without momentum: theta' = theta - lr (g + lambda theta)."""

    state_names: tuple[str, ...] = ()
    needs_grad = False

    def __init__(self, decays: Sequence[float]):
        self.decays = list(decays)
        self.uniform = self.decays[0] if len(set(self.decays)) == 1 else None

    def _add_decay(self, into: Tensors, tensors: Tensors, scale: float) -> None:
        """into += scale * wd * tensors, per parameter."""
        if self.uniform is not None:
            if self.uniform:
                torch._foreach_add_(into, tensors, alpha=scale * self.uniform)
            return
        for a, b, wd in zip(into, tensors, self.decays):
            if wd:
                a.add_(b, alpha=scale * wd)

    def step(self, theta, state, grad, t, lr):
        d = list(grad)
        if any(self.decays):
            d = [x.clone() for x in d]
            self._add_decay(d, theta, 1.0)
        return torch._foreach_add(theta, d, alpha=-lr), []

    def adjoint(self, theta, state, grad, t, lr, adjoint):
        (theta_bar,) = adjoint
        g_bar = torch._foreach_mul(theta_bar, -lr)
        part = [x.clone() for x in theta_bar]
        self._add_decay(part, theta_bar, -lr)
        return g_bar, [part]


class AdamAdjoint:
    """torch.optim.Adam / AdamW (see `unlearnspec.magic.adam` for the derivation)."""

    state_names: tuple[str, ...] = ("exp_avg", "exp_avg_sq")
    needs_grad = True

    def __init__(self, config: OptimizerConfig, decays: Sequence[float], second_moment: bool = True):
        self.hyper = config.hyper
        self.initial_step = config.initial_step
        self.decays = list(decays)
        self.second_moment = second_moment
        self.touched: Tensors = []
        """g_bar of the last adjoint step on coordinates with v' > 0 (for the rounding diagnostics)."""

    def _step(self, t: int, lr: float) -> AdamStep:
        return AdamStep(lr, self.initial_step + t + 1, self.decays, self.hyper)

    def step(self, theta, state, grad, t, lr):
        new = adam_step(AdamState(theta, *state), grad, self._step(t, lr))
        return new.theta, [new.m, new.v]

    def adjoint(self, theta, state, grad, t, lr, adjoint):
        assert grad is not None
        self.touched = []
        g_bar, bar = adam_adjoint(
            AdamState(theta, *state),
            grad,
            self._step(t, lr),
            AdamState(*adjoint),
            second_moment=self.second_moment,
            touched=self.touched,
        )
        return g_bar, [bar.theta, bar.m, bar.v]


@dataclass(frozen=True)
class OptimizerKind:
    """Everything the exact reverse pass knows of one torch optimizer."""

    torch_class: type[torch.optim.Optimizer]
    """The class `checks.check_optimizer` accepts and `checks.optimizer_config` maps back to this name."""
    adjoint: Callable[[OptimizerConfig, Sequence[float], bool], OptimizerAdjoint]
    """(config, per-parameter decays, second_moment) -> the step and adjoint rule."""
    state_names: tuple[str, ...] = ()
    """The optimizer's per-parameter tensors (torch's state keys) the recorder keeps next to theta."""
    hyperparameters: tuple[str, ...] = ()
    """Param-group keys besides lr and weight_decay that must be one value for all groups (checked, recorded)."""
    decoupled: bool = False
    """Weight decay applied to theta (AdamW) rather than folded into the gradient."""


OPTIMIZERS: dict[OptimizerName, OptimizerKind] = {
    "sgd": OptimizerKind(torch.optim.SGD, lambda config, decays, second_moment: SGDAdjoint(decays)),
    "adam": OptimizerKind(torch.optim.Adam, AdamAdjoint, ("exp_avg", "exp_avg_sq"), ("betas", "eps")),
    "adamw": OptimizerKind(torch.optim.AdamW, AdamAdjoint, ("exp_avg", "exp_avg_sq"), ("betas", "eps"), decoupled=True),
}
"""Every optimizer the reverse pass replays, by its spec name (`training.optimizer.name`)."""


def optimizer_name(optimizer: torch.optim.Optimizer) -> Optional[OptimizerName]:
    """The OPTIMIZERS name of a torch optimizer (its exact class), or None when the reverse pass has no rule for it."""
    return next((name for name, kind in OPTIMIZERS.items() if type(optimizer) is kind.torch_class), None)


def make_adjoint(config: OptimizerConfig, decays: Sequence[float], *, second_moment: bool = True) -> OptimizerAdjoint:
    """The rule for a recorded optimizer."""
    return OPTIMIZERS[config.name].adjoint(config, decays, second_moment)


# --------------------------------------------------------------------------- clipping
Reduce = Optional[Callable[[torch.Tensor], torch.Tensor]]
"""Sums a small tensor over the ranks that each hold a shard of the parameters (sharded reverse pass);
None when every rank holds whole tensors."""


def grad_norm(grad: Tensors, reduce: Reduce = None) -> torch.Tensor:
    """The total L2 norm as clip_grad_norm_ computes it (norm of the per-tensor norms); over the shards of
    all ranks when `reduce` is given."""
    norms = torch.stack(torch._foreach_norm(grad, 2.0))
    if reduce is None:
        return torch.linalg.vector_norm(norms, 2.0)
    return reduce((norms * norms).sum()).sqrt()


def clip(grad: Tensors, max_norm: Optional[float], reduce: Reduce = None) -> Tensors:
    """g * min(max_norm / (||g|| + 1e-6), 1), exactly torch.nn.utils.clip_grad_norm_ (new tensors)."""
    if max_norm is None:
        return grad
    coef = torch.clamp(float(max_norm) / (grad_norm(grad, reduce) + CLIP_EPS), max=1.0)
    return list(torch._foreach_mul(grad, coef))


def clip_adjoint(grad: Tensors, g_bar: Tensors, max_norm: Optional[float], reduce: Reduce = None) -> Tensors:
    """Adjoint of the raw gradient from the adjoint of the clipped one.

    Unclipped (coef >= 1): the identity. Clipped, g_c = tau g / (n + delta) with n = ||g||, so
    g_bar_raw = tau / (n + delta) g_bar - tau <g, g_bar> / (n (n + delta)^2) g. Sharded (`reduce`): the norm
    and the dot product are sums over every rank's shard.
    """
    if max_norm is None:
        return g_bar
    n = grad_norm(grad, reduce)
    tau = float(max_norm)
    if float(tau / (n + CLIP_EPS)) >= 1.0:
        return g_bar
    dot = adjoint_dots(grad, g_bar)  # a scalar, or [K] for K batched adjoints ([K, *shape] each)
    if reduce is not None:
        dot = reduce(dot.detach().clone())
    out = list(torch._foreach_mul(g_bar, tau / (n + CLIP_EPS)))
    coef = -tau * dot / (n * (n + CLIP_EPS) ** 2)
    if coef.dim() == 0:
        torch._foreach_add_(out, torch._foreach_mul(grad, coef))
    else:
        for o, g in zip(out, grad):
            o.add_(coef.view(-1, *([1] * g.dim())) * g)
    return out
