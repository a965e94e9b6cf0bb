"""SimNPO (Fan et al. 2024, "Simplicity Prevails"): NPO without a reference model, length-normalised.

L = -(2/beta) * (1/R) * sum_i log sigmoid(-(beta/|y_i|) * log pi(y_i|x_i) - gamma) + alpha * CE(retain), over the R
forget rows of the step that hold a selected token; log pi(y_i|x_i) = sum_t |w_it| log p(t) and |y_i| = sum_t |w_it|
(the token rule's selection; with `tokens.mode: all` the row's valid tokens, as the paper), so the sigmoid reads
the weighted mean token log-prob of the row.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from unlearnspec.train.objectives.base import Objective, retain_term, selection
from unlearnspec.train.objectives.npo import active_rows, sequence_logprob


def simnpo_loss(
    logp: torch.Tensor, lengths: torch.Tensor, beta: float, gamma: float, rows: torch.Tensor
) -> torch.Tensor:
    """-(2/beta) * sum_i log sigmoid(-(beta / lengths_i) * logp_i - gamma) / rows, for rows with lengths > 0 [B]."""
    return -(2.0 / beta) * F.logsigmoid(-(beta / lengths) * logp - gamma).sum() / rows.clamp(min=1e-12)


class SimNpo(Objective):
    name = "simnpo"
    count_names = ("forget_rows", "retain_tokens")

    def counts(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        w = selection(batch["token_weights"], batch["labels"])
        return torch.stack([active_rows(w).sum().float().cpu(), self.retain_count(batch)])

    def loss(self, model: Any, batch: dict[str, torch.Tensor], counts: torch.Tensor) -> torch.Tensor:
        forget_lp, retain_lp = self.forget_and_retain_logprobs(model, batch)
        w = selection(batch["token_weights"], batch["labels"])
        active = active_rows(w)
        logp = sequence_logprob(forget_lp, w)[active]
        lengths = w[:, 1:].sum(dim=1)[active].to(logp.dtype)
        loss = simnpo_loss(logp, lengths, float(self.spec.beta), float(self.spec.gamma), counts[0])
        if retain_lp is not None:
            loss = loss + self.alpha * retain_term(-retain_lp, counts[1])
        return loss
