"""torch.optim.Adam / AdamW as list-of-tensor functions, and the exact adjoint of one step.

Forward (what `torch.optim.Adam(W)` does per parameter at step count k = k0 + t + 1, foreach=False;
lr = eta_t, decay lambda per parameter group, c = eta / (1 - b1^k), s = sqrt(1 - b2^k)):

    g'     = g + lambda * theta                  (Adam: L2 folded into the gradient; AdamW: g' = g)
    theta~ = (1 - eta * lambda) * theta          (AdamW: decoupled decay, before the update; Adam: theta)
    m'     = m.lerp(g', 1 - b1)                  = b1 m + (1 - b1) g'
    v'     = b2 v + (1 - b2) g' * g'             (addcmul)
    u      = sqrt(v') / s + eps                  (eps after the square root)
    theta' = theta~ - c * m' / u                 (addcdiv)

Reverse. Given the adjoints (theta_bar', m_bar', v_bar') of the step's outputs, the chain rule gives,
elementwise (r = sqrt(v')):

    M        = m_bar' - c * theta_bar' / u                        total adjoint of m'
    V        = v_bar' + c * theta_bar' * m' / (2 s u^2 r)         total adjoint of v'
    g'_bar   = (1 - b1) M + 2 (1 - b2) g' * V                     adjoint of the (folded) gradient
    m_bar    = b1 M,   v_bar = b2 V                               adjoints of the step's inputs m, v
    theta_bar = a * theta_bar' + [Adam] lambda * g'_bar + H_t g'_bar,   a = 1 - eta*lambda (AdamW) or 1

and the per-token terms d<grad L_t(theta, w), g'_bar>/dw. H_t g'_bar and those terms come out of ONE
double backward of <grad L_t, g'_bar> (done by `reverse.py`); this module supplies everything else.
Unlike SGD, g'_bar depends on the gradient g itself (through m', v'), so the reverse step needs g
before the double backward (with one micro-batch it reuses the same graph: no extra cost).

The v = 0 trap: r = 0 exactly where v' = 0, i.e. where every gradient so far was 0 (embedding rows of
tokens never seen): d sqrt(v)/dv is infinite there, and autograd would give 0 * inf = NaN. The exact
derivative is 0: v' = 0 forces m' = 0 (both are sums of the same zero gradients), theta' does not
depend on v' along any path that changes g (dv'/dg' = 2(1-b2) g' = 0 and the V-term is O(|g'|)), so
the V-term is set to 0 where r == 0 (also covering the float case g'^2 underflowing to 0).

Numerics: theta_bar / u and theta_bar * m' / (u^2 r) are ~1/eps where v' is tiny (early steps, rare
rows), so M and V are large and g'_bar can be their near-cancelling difference (at k = 1 it is
-eta * eps / (|g| + eps)^2 * theta_bar' per element), and the backward recursion can grow. The reverse
pass reports how much (`ReplayStats.adjoint_gain`, `adjoint_growth`, `rounding_risk`) and warns;
benchmarks/magic_adam_precision.py measures the float32-vs-float64 gap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

Tensors = list[torch.Tensor]


@dataclass(frozen=True)
class AdamHyper:
    """The hyperparameters of one Adam/AdamW run that the replay needs (lr comes per step)."""

    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    decoupled: bool = True
    """True for AdamW (decay multiplies theta before the update), False for Adam (L2 in the gradient)."""


def _bias(hyper: AdamHyper, k: int) -> tuple[float, float]:
    """(c / lr, s): 1 / (1 - b1^k) and sqrt(1 - b2^k), in the Python float arithmetic torch uses."""
    b1, b2 = hyper.betas
    return 1.0 / (1 - b1**k), (1 - b2**k) ** 0.5


def fold_decay(grad: Tensors, theta: Tensors, decays: Sequence[float], hyper: AdamHyper) -> Tensors:
    """g' = g + lambda theta for Adam (new tensors); the gradient itself for AdamW."""
    if hyper.decoupled or not any(decays):
        return grad
    return [g.add(p, alpha=wd) if wd else g for g, p, wd in zip(grad, theta, decays)]


def moments(m: Tensors, v: Tensors, g: Tensors, hyper: AdamHyper) -> tuple[Tensors, Tensors]:
    """(m', v') with torch's ops: m.lerp(g, 1 - b1), v * b2 + (1 - b2) g * g."""
    b1, b2 = hyper.betas
    m_new = torch._foreach_lerp(m, g, 1 - b1)
    v_new = torch._foreach_mul(v, b2)
    torch._foreach_addcmul_(v_new, g, g, value=1 - b2)
    return list(m_new), list(v_new)


def denominator(v_new: Tensors, hyper: AdamHyper, k: int) -> Tensors:
    """u = sqrt(v') / sqrt(1 - b2^k) + eps."""
    _, s = _bias(hyper, k)
    u = torch._foreach_sqrt(v_new)
    torch._foreach_div_(u, s)
    torch._foreach_add_(u, hyper.eps)
    return list(u)


@dataclass(frozen=True)
class AdamState:
    """The tensors one Adam step reads and writes: theta and the moments m, v (one tensor per parameter each). The
    adjoint of a state has the same shape: (theta_bar, m_bar, v_bar)."""

    theta: Tensors
    m: Tensors
    v: Tensors


@dataclass(frozen=True)
class AdamStep:
    """What fixes one step's arithmetic besides the state and the gradient."""

    lr: float
    k: int
    """The optimizer's step count at this step (1 on the first step)."""
    decays: Sequence[float]
    """Weight decay per parameter, ordered like the state's tensors."""
    hyper: AdamHyper


def adam_step(state: AdamState, grad: Tensors, step: AdamStep) -> AdamState:
    """One step (new tensors; inputs untouched), as torch does it."""
    hyper, lr, decays = step.hyper, step.lr, step.decays
    theta = state.theta
    g = fold_decay(grad, theta, decays, hyper)
    if hyper.decoupled and any(decays):
        theta = [p.mul(1 - lr * wd) if wd else p for p, wd in zip(theta, decays)]
    m_new, v_new = moments(state.m, state.v, g, hyper)
    u = denominator(v_new, hyper, step.k)
    inv_bc1, _ = _bias(hyper, step.k)
    theta_new = torch._foreach_addcdiv(theta, m_new, u, value=-(lr * inv_bc1))
    return AdamState(list(theta_new), m_new, v_new)


def adam_adjoint(
    state: AdamState,
    grad: Tensors,
    step: AdamStep,
    adjoint: AdamState,
    *,
    second_moment: bool = True,
    touched: Tensors | None = None,
) -> tuple[Tensors, AdamState]:
    """(g_bar, adjoint of the step's input state) from `adjoint`, that of its output state (see the module docstring).

    `grad` is the raw (clipped, if the run clipped) gradient of step t at theta; g_bar is the adjoint
    of that gradient. The returned theta_bar lacks the H_t g_bar term, which the caller adds.
    `second_moment=False` drops V (the v-adjoint); it exists only for the mutation test. A `touched`
    list receives g_bar where v' > 0 and 0 elsewhere (coordinates no gradient ever reached carry a huge
    but harmless g_bar: their gradients and Hessian couplings are exactly 0).
    """
    hyper, lr, decays = step.hyper, step.lr, step.decays
    theta, theta_bar, m_bar, v_bar = state.theta, adjoint.theta, adjoint.m, adjoint.v
    b1, b2 = hyper.betas
    g = fold_decay(grad, theta, decays, hyper)
    m_new, v_new = moments(state.m, state.v, g, hyper)
    inv_bc1, s = _bias(hyper, step.k)
    c = lr * inv_bc1
    r = torch._foreach_sqrt(v_new)
    u = torch._foreach_div(r, s)  # the arithmetic of `denominator`, keeping r = sqrt(v')
    torch._foreach_add_(u, hyper.eps)
    t_over_u = torch._foreach_div(theta_bar, u)
    big_m = list(torch._foreach_add(m_bar, t_over_u, alpha=-c))  # M = m_bar' - c theta_bar' / u
    reached = [vn > 0 for vn in v_new]
    if second_moment:
        # V = v_bar' + c theta_bar' m' / (2 s u^2 r), exactly 0 where r = sqrt(v') = 0
        big_v = list(torch._foreach_mul(t_over_u, m_new))
        den = torch._foreach_mul(u, r)
        torch._foreach_clamp_min_(den, torch.finfo(den[0].dtype).tiny)  # r = 0: finite, then zeroed below
        torch._foreach_div_(big_v, den)
        big_v = [torch.where(ok, term, 0.0) for ok, term in zip(reached, big_v)]
        torch._foreach_mul_(big_v, c / (2 * s))
        torch._foreach_add_(big_v, v_bar)
    else:
        big_v = list(v_bar)
    g_bar = torch._foreach_mul(big_m, 1 - b1)
    torch._foreach_add_(g_bar, torch._foreach_mul(g, big_v), alpha=2 * (1 - b2))
    if touched is not None:
        touched.extend(torch.where(ok, gb, 0.0) for ok, gb in zip(reached, g_bar))
    if hyper.decoupled:
        theta_part = [tb.mul(1 - lr * wd) if wd else tb.clone() for tb, wd in zip(theta_bar, decays)]
    else:
        theta_part = [tb.add(gb, alpha=wd) if wd else tb.clone() for tb, gb, wd in zip(theta_bar, g_bar, decays)]
    return list(g_bar), AdamState(theta_part, list(torch._foreach_mul(big_m, b1)), list(torch._foreach_mul(big_v, b2)))
