"""Cost and conditioning figures of one MAGIC reverse pass, and the warning when float rounding may
dominate the scores (Adam's 1/(sqrt(v)+eps) on small second moments)."""

from __future__ import annotations

from dataclasses import dataclass

from unlearnspec.magic.trajectory import Trajectory


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


ROUNDING_RISK_WARN = 1e-4
"""Warn above this `ReplayStats.rounding_risk` (measured: gaps <= 1e-2 at risk <= 1.2e-5, 0.75 at 7.7e-4)."""


def rounding_warning(stats: ReplayStats, trajectory: Trajectory) -> str:
    opt = trajectory.optimizer
    hint = (
        f"raise training.optimizer.eps (now {opt.eps:g}) or lower the lr, or compute in float64 (model.dtype)"
        if opt.name != "sgd"
        else "compute in float64 (model.dtype) or lower the lr"
    )
    return (
        f"MAGIC: the reverse pass amplifies rounding (adjoint gain {stats.adjoint_gain:.3g}, growth "
        f"x{stats.adjoint_growth:.3g}; rounding risk {stats.rounding_risk:.2g} > {ROUNDING_RISK_WARN:g}): where "
        f"Adam's second moments are small, 1/(sqrt(v)+eps) gives huge effective steps and the metagradient is "
        f"ill-conditioned; float32 scores in such a regime were off by 75% on the toy world. {hint[0].upper() + hint[1:]}; "
        "measure the float32-vs-float64 gap with benchmarks/magic_adam_precision.py."
    )
