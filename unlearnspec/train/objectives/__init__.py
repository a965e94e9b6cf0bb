"""The training objectives (pure losses) and their registry: adding one is a spec class in
unlearnspec/spec/objectives.py, one module here and one line in OBJECTIVES.

`weighted` is the trainer's own loss (unlearnspec.train.loss.weighted_nll_loss) and builds no objective object, so
a spec without `objective` trains exactly as before.
"""

from __future__ import annotations

from typing import Any, Optional

from unlearnspec.train.loss import Normalizer
from unlearnspec.train.objectives.base import Objective, RetainRows
from unlearnspec.train.objectives.grad_diff import GradDiff
from unlearnspec.train.objectives.npo import Npo
from unlearnspec.train.objectives.reference import ReferenceCache
from unlearnspec.train.objectives.rmu import Rmu
from unlearnspec.train.objectives.simnpo import SimNpo

OBJECTIVES: dict[str, type[Objective]] = {
    "grad_diff": GradDiff,
    "npo": Npo,
    "simnpo": SimNpo,
    "rmu": Rmu,
}
"""Objective name (the spec's `objective.name`) -> its loss."""


def build_objective(
    spec_objective: Any,
    normalizer: Normalizer,
    retain: Optional[RetainRows],
    fused_head: bool = True,
    reference: Optional[ReferenceCache] = None,
) -> Optional[Objective]:
    """The objective of a spec's `objective` section; None for `weighted` (the trainer's own loss). `reference`:
    the forget grid's reference log-probs, for an objective with `needs_reference` (NPO)."""
    if spec_objective.name == "weighted":
        return None
    return OBJECTIVES[spec_objective.name](spec_objective, normalizer, retain, fused_head, reference)


__all__ = ["OBJECTIVES", "Objective", "RetainRows", "ReferenceCache", "build_objective"]
