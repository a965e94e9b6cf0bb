"""The `objective` section: which loss a point minimises, as a union on `name` (weighted, grad_diff, npo, simnpo,
rmu), each method's hyperparameters its fields. Imports no torch; the losses live in unlearnspec/train/objectives/.
"""

from __future__ import annotations

import difflib
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BeforeValidator, Field, PositiveFloat, model_validator

from unlearnspec.spec.base import Seed, SpecRuleError, _Section


class WeightedObjective(_Section):
    """The default: sum(w * token cross-entropy) / normalizer with the token rule's signed weights (a negative
    weight is gradient ascent on that token). A spec without `objective` trains this, and its hash is unchanged."""

    name: Literal["weighted"] = "weighted"
    """`weighted`."""


class GradDiffObjective(_Section):
    """Gradient difference (the TOFU benchmark's GradDiff): L = -CE(forget) + alpha * CE(retain). `data` is the
    forget set, `data.retain` the retain set. See docs/objectives/grad_diff.md."""

    name: Literal["grad_diff"]
    """`grad_diff`."""
    alpha: float = Field(ge=0.0)
    """Weight of the retain term (descent on `data.retain`); 0 is plain gradient ascent and needs no retain set."""


class NpoObjective(_Section):
    """Negative Preference Optimization (Zhang et al. 2024): L = -(2/beta) mean_i log sigmoid(-beta * log(pi(y_i|x_i) /
    pi_ref(y_i|x_i))) over forget rows, pi_ref the frozen base model (its log-probs computed once per grid and cached),
    plus alpha * CE(retain). See docs/objectives/npo.md."""

    name: Literal["npo"]
    """`npo`."""
    beta: PositiveFloat
    """Inverse temperature (the paper used 0.1); as beta -> 0 the gradient tends to gradient ascent's."""
    alpha: float = Field(default=0.0, ge=0.0)
    """Weight of a retain term alpha * CE(data.retain) (NPO+RT); 0 (default): none, and no retain set."""


class SimNpoObjective(_Section):
    """SimNPO (Fan et al. 2024): L = -(2/beta) mean_i log sigmoid(-(beta/|y_i|) log pi(y_i|x_i) - gamma) over forget
    rows: length-normalised, no reference model; plus alpha * CE(retain). See docs/objectives/simnpo.md."""

    name: Literal["simnpo"]
    """`simnpo`."""
    beta: PositiveFloat
    """Inverse temperature of the length-normalised log-likelihood."""
    gamma: float = Field(default=0.0, ge=0.0)
    """Reward margin inside the sigmoid (the paper's gamma; 0 in several of its settings)."""
    alpha: float = Field(default=0.0, ge=0.0)
    """Weight of a retain term alpha * CE(data.retain); 0 (default): none, and no retain set."""


class RmuObjective(_Section):
    """Representation Misdirection for Unlearning (Li et al. 2024, the WMDP paper): at layer `layer`,
    L = mean over forget tokens of ||h(t) - c*u||^2 + alpha * mean over retain tokens of ||h(t) - h_frozen(t)||^2,
    u a seeded random unit vector; only `train_layers` train. See docs/objectives/rmu.md."""

    name: Literal["rmu"]
    """`rmu`."""
    layer: int = Field(ge=0)
    """l: the decoder layer (0-based) whose output activations are steered (the paper: 7 on Zephyr-7B)."""
    steering_coef: float = Field(ge=0.0)
    """c: forget activations are pushed toward c*u (the paper: 6.5 on Zephyr-7B for bio)."""
    alpha: float = Field(ge=0.0)
    """Weight of the retain term that holds retain activations at the frozen model's (the paper: 1200 for bio);
    0 needs no retain set."""
    seed: Seed
    """Seed of u: entries drawn uniformly from [0, 1) (as the paper), then normalised to unit length."""
    train_layers: Optional[list[int]] = Field(default=None, min_length=1)
    """Decoder layers whose parameters train; unset: layer-2, layer-1 and layer (those that exist), as the paper."""
    train_params: Literal["mlp", "layer"] = "mlp"
    """Which parameters of each train layer: `mlp` (its MLP block, as the paper) or `layer` (all of it)."""

    @model_validator(mode="after")
    def _layers(self) -> "RmuObjective":
        layers = self.train_layers or []
        if len(set(layers)) != len(layers):
            raise SpecRuleError(("train_layers",), f"`train_layers: {layers}` names a layer twice; list each once.")
        if any(x < 0 for x in layers):
            raise SpecRuleError(
                ("train_layers",), f"`train_layers: {layers}` holds a negative index; layers are 0-based."
            )
        above = [x for x in layers if x > self.layer]
        if above:
            raise SpecRuleError(
                ("train_layers",),
                f"`train_layers` holds {above}, above `layer: {self.layer}`: layers after "
                "the steered one do not change its activations, so they would get no gradient. Keep "
                f"layers <= {self.layer} (unset: {default_train_layers(self.layer)}).",
            )
        return self

    def layers_trained(self) -> list[int]:
        """The decoder layers whose parameters train (the default: layer-2..layer, clipped at 0)."""
        return list(self.train_layers) if self.train_layers else default_train_layers(self.layer)


def default_train_layers(layer: int) -> list[int]:
    """The paper's choice: the MLPs of layers layer-2, layer-1 and layer (those that exist)."""
    return list(range(max(0, layer - 2), layer + 1))


OBJECTIVE_SPECS: dict[str, type[_Section]] = {
    "weighted": WeightedObjective,
    "grad_diff": GradDiffObjective,
    "npo": NpoObjective,
    "simnpo": SimNpoObjective,
    "rmu": RmuObjective,
}
"""Objective name -> its spec section (the loss of each is registered in unlearnspec.train.objectives)."""


def _known_name(data: Any) -> Any:
    """An unknown or missing `name` answers with the registry, not pydantic's union-tag message."""
    if isinstance(data, dict):
        name = data.get("name")
        if name is None:
            raise SpecRuleError(("name",), f"the objective needs `name`; available: {', '.join(OBJECTIVE_SPECS)}.")
        if not isinstance(name, str) or name not in OBJECTIVE_SPECS:
            shown = str(name)[:40]
            close = difflib.get_close_matches(shown, list(OBJECTIVE_SPECS), n=1, cutoff=0.6)
            hint = f" Did you mean: {close[0]}?" if close else ""
            raise SpecRuleError(
                ("name",), f"Unknown objective {shown!r}.{hint} Available: {', '.join(OBJECTIVE_SPECS)}."
            )
    return data


ObjectiveSpec = Annotated[
    Union[WeightedObjective, GradDiffObjective, NpoObjective, SimNpoObjective, RmuObjective],
    Field(discriminator="name"),
    BeforeValidator(_known_name),
]
"""One of the objectives, chosen by `name`."""


def objective_alpha(objective: Any) -> float:
    """Weight of the objective's retain term (0 for `weighted` and for methods run without one)."""
    return float(getattr(objective, "alpha", 0.0))


def is_unlearning(objective: Any) -> bool:
    """True for the established unlearning objectives (everything but `weighted`)."""
    return not isinstance(objective, WeightedObjective)
