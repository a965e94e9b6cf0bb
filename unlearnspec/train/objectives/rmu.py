"""RMU (Li et al. 2024, the WMDP paper): steer the forget activations at one layer toward a fixed random direction,
and hold the retain activations at the frozen model's.

L = sum_{forget} |w_t| * ||h(t) - c*u||^2 / D_forget + alpha * sum_{retain} ||h(t) - h_frozen(t)||^2 / D_retain,
h(t) the output of decoder layer `layer` at position t, |w_t| the token rule's selection of token t (the first
position never counts), D_forget the spec's normalizer over the step, D_retain the step's valid retain tokens. u is
a unit vector with entries drawn uniformly from [0, 1) (the paper's), seeded. Only `train_layers` train; layers
after `layer` are not run for the loss's sake but the forward still passes through them (logits_to_keep=1).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Optional

import torch

from unlearnspec.errors import UserError
from unlearnspec.train.loss import normalizer_count
from unlearnspec.train.objectives.base import Objective, RetainRows, selection, targets


def control_vector(dim: int, coef: float, seed: int) -> torch.Tensor:
    """c * u, u = r / ||r|| with r uniform in [0, 1)^dim from a seeded CPU generator (the same u on every machine)."""
    r = torch.rand(dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)
    return coef * r / r.norm()


@dataclass(frozen=True)
class RetainActivations:
    """RMU's retain half of a step: the trained and the frozen model's activations [B, S, d] on the retain rows, the
    positions that count (mask [B, S]) and their number over the step (D_retain)."""

    h: torch.Tensor
    frozen_h: torch.Tensor
    mask: torch.Tensor
    count: torch.Tensor


def rmu_loss(
    forget_h: torch.Tensor,
    forget_weights: torch.Tensor,
    control: torch.Tensor,
    forget_count: torch.Tensor,
    retain: Optional[RetainActivations] = None,
    alpha: float = 0.0,
) -> torch.Tensor:
    """sum_t w_t ||forget_h_t - control||^2 / forget_count + alpha * sum_t m_t ||retain_h_t - frozen_h_t||^2 / retain_count.

    Activations [B, S, d] (half precision computed in float32), weights and mask [B, S] (position t <-> token t),
    control [d]."""
    dist = (_wide(forget_h) - control.to(forget_h.device)).pow(2).sum(dim=-1)
    loss = (forget_weights.to(dist.dtype) * dist).sum() / forget_count.clamp(min=1e-12)
    if alpha and retain is not None:
        drift = (_wide(retain.h) - _wide(retain.frozen_h)).pow(2).sum(dim=-1)
        loss = loss + alpha * (retain.mask.to(drift.dtype) * drift).sum() / retain.count.clamp(min=1e-12)
    return loss


def _wide(h: torch.Tensor) -> torch.Tensor:
    return h if h.dtype in (torch.float32, torch.float64) else h.float()


def decoder_layers(model: Any) -> torch.nn.ModuleList:
    """The model's list of decoder layers (gpt_neox.layers, model.layers, transformer.h, ...)."""
    n = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    for _, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n:
            return module
    raise UserError.one(
        "objective",
        f"objective `rmu` cannot find the decoder layers of {type(model).__name__} (a module "
        f"list of config.num_hidden_layers={n} blocks).",
        loc="objective.name",
    )


class _Capture:
    """A forward hook that keeps the output of one layer (only while `on`)."""

    def __init__(self, layer: torch.nn.Module):
        self.on = False
        self.value: Optional[torch.Tensor] = None
        layer.register_forward_hook(self)

    def __call__(self, module: Any, args: Any, output: Any) -> None:
        if self.on:
            self.value = output[0] if isinstance(output, tuple) else output


class Rmu(Objective):
    name = "rmu"
    count_names = ("forget_tokens", "retain_tokens")

    def __init__(
        self, spec: Any, normalizer: Any, retain: Optional[RetainRows], fused_head: bool = True, reference: Any = None
    ):
        super().__init__(spec, normalizer, retain, fused_head, reference)
        self.layer = int(spec.layer)
        self.control: Optional[torch.Tensor] = None
        self.frozen: Optional[torch.nn.Module] = None
        self.trained: list[str] = []

    def prepare_model(self, model: Any) -> None:
        layers = decoder_layers(model)
        if self.layer >= len(layers):
            raise UserError.one(
                "objective",
                f"objective.layer={self.layer} but the model has {len(layers)} decoder "
                f"layers (0-based: 0..{len(layers) - 1}). Lower `layer`.",
                loc="objective.layer",
            )
        bad = [i for i in self.spec.layers_trained() if i >= len(layers)]
        if bad:
            raise UserError.one(
                "objective",
                f"objective.train_layers holds {bad}, beyond the model's {len(layers)} layers.",
                loc="objective.train_layers",
            )
        if self.alpha > 0:  # the frozen model, copied before anything trains (and before the trainer patches forward)
            self.frozen = copy.deepcopy(model).eval().requires_grad_(False)
            self._frozen_capture = _Capture(decoder_layers(self.frozen)[self.layer])
        model.requires_grad_(False)
        for i in self.spec.layers_trained():
            block = layers[i] if self.spec.train_params == "layer" else getattr(layers[i], "mlp", None)
            if block is None:
                raise UserError.one(
                    "objective",
                    f"decoder layer {i} of {type(model).__name__} has no `mlp` block; set `train_params: layer`.",
                    loc="objective.train_params",
                )
            block.requires_grad_(True)
        self.trained = [n for n, p in model.named_parameters() if p.requires_grad]
        self._capture = _Capture(layers[self.layer])
        self.control = control_vector(
            int(model.config.hidden_size), float(self.spec.steering_coef), int(self.spec.seed)
        )

    def counts(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        w = selection(batch["token_weights"], batch["labels"])
        forget = normalizer_count(batch["labels"], w, self.normalizer)
        return torch.stack([torch.as_tensor(forget).float().cpu(), self.retain_count(batch)])

    def _activations(self, model: Any, capture: _Capture, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        capture.on, capture.value = True, None
        try:
            model(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=1)
        finally:
            capture.on = False
        assert capture.value is not None, "the layer hook did not fire"
        return capture.value

    def loss(self, model: Any, batch: dict[str, torch.Tensor], counts: torch.Tensor) -> torch.Tensor:
        assert self.control is not None, "prepare_model(model) runs before training"
        ids, mask = batch["input_ids"], batch["attention_mask"]
        w = selection(batch["token_weights"], batch["labels"])
        if self.retain is None:
            h = self._activations(model, self._capture, ids, mask)
            return rmu_loss(h, w, self.control, counts[0])
        r = self.retain.paired(batch["row_id"], ids.device)
        h = self._activations(
            model, self._capture, torch.cat([ids, r["input_ids"]]), torch.cat([mask, r["attention_mask"]])
        )
        assert self.frozen is not None
        with torch.no_grad():
            frozen_h = self._activations(self.frozen, self._frozen_capture, r["input_ids"], r["attention_mask"])
        b = ids.shape[0]
        retain = RetainActivations(h[b:], frozen_h, targets(r["labels"]), counts[1])
        return rmu_loss(h[:b], w, self.control, counts[0], retain, self.alpha)

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out["trained_parameters"] = self.trained
        return out
