"""NPO (Zhang et al. 2024, "Negative Preference Optimization"): a bounded, reference-anchored gradient ascent.

L = -(2/beta) * (1/R) * sum_i log sigmoid(-beta * (log pi(y_i|x_i) - log pi_ref(y_i|x_i))) + alpha * CE(retain),
over the R forget rows of the step that hold a selected token; log pi(y_i|x_i) = sum_t |w_it| log p(t), the token
rule's selection weighting each token's log-prob (all valid tokens with `tokens.mode: all`, as the paper). pi_ref is
the frozen base model: its per-token log-probs are computed once per grid and cached (unlearnspec.train.objectives.
reference). dL/d log pi(y_i) = 2 sigmoid(beta * r_i) / R, which tends to 1/R as beta -> 0: gradient ascent on the
summed log-likelihood of each row.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F

from unlearnspec.train.objectives.base import Objective, RetainRows, retain_term, selection
from unlearnspec.train.objectives.reference import ReferenceCache


def npo_loss(logp: torch.Tensor, ref_logp: torch.Tensor, beta: float, rows: torch.Tensor) -> torch.Tensor:
    """-(2/beta) * sum_i log sigmoid(-beta * (logp_i - ref_logp_i)) / rows, for sequence log-likelihoods [B]."""
    return -(2.0 / beta) * F.logsigmoid(-beta * (logp - ref_logp)).sum() / rows.clamp(min=1e-12)


def sequence_logprob(token_logprobs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum_t w_t * log p_t per row [B]: `token_logprobs` [B, S-1] aligned with `weights[:, 1:]` (target alignment)."""
    return (weights[:, 1:].to(token_logprobs.dtype) * token_logprobs).sum(dim=1)


def active_rows(weights: torch.Tensor) -> torch.Tensor:
    """Bool [B]: rows holding at least one selected token (the others have no y to unlearn and do not count)."""
    return (weights[:, 1:] != 0).any(dim=1)


class Npo(Objective):
    name = "npo"
    count_names = ("forget_rows", "retain_tokens")
    needs_reference = True

    def __init__(
        self,
        spec: Any,
        normalizer: Any,
        retain: Optional[RetainRows],
        fused_head: bool = True,
        reference: Optional[ReferenceCache] = None,
    ):
        super().__init__(spec, normalizer, retain, fused_head, reference)
        self.beta = float(spec.beta)
        self.ref_logprobs: Optional[torch.Tensor] = None  # [N, S] float32, target alignment, from `attach`

    def attach(self, trainer: Any) -> None:
        self.ref_logprobs = self.reference.get(trainer.model, self.fused_head)

    def counts(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        w = selection(batch["token_weights"], batch["labels"])
        return torch.stack([active_rows(w).sum().float().cpu(), self.retain_count(batch)])

    def loss(self, model: Any, batch: dict[str, torch.Tensor], counts: torch.Tensor) -> torch.Tensor:
        assert self.ref_logprobs is not None, "attach(trainer) computes the reference log-probs first"
        forget_lp, retain_lp = self.forget_and_retain_logprobs(model, batch)
        w = selection(batch["token_weights"], batch["labels"])
        ref = self.ref_logprobs[batch["row_id"].detach().cpu()].to(forget_lp.device)
        active = active_rows(w)
        logp = sequence_logprob(forget_lp, w)[active]
        ref_logp = sequence_logprob(ref[:, 1:], w)[active]
        loss = npo_loss(logp, ref_logp, self.beta, counts[0])
        if retain_lp is not None:
            loss = loss + self.alpha * retain_term(-retain_lp, counts[1])
        return loss

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        if self.reference is not None:
            out["reference"] = self.reference.describe()
        return out
