"""Gradient difference (TOFU's GradDiff): ascent on the forget tokens plus alpha times descent on retain rows.

L = -sum_{forget} |w| * CE / D_forget + alpha * sum_{retain} CE / D_retain, where |w| is the token rule's selection,
D_forget the spec's normalizer counted over the step and D_retain the step's valid retain tokens. With `tokens.mode:
all` and `normalizer: valid` this is -CE(forget) + alpha * CE(retain), the token-mean cross-entropies of the step.
"""

from __future__ import annotations

from typing import Any

import torch

from unlearnspec.train.loss import normalizer_count
from unlearnspec.train.objectives.base import Objective, retain_term, selection


def grad_diff_loss(
    forget_nll: torch.Tensor,
    forget_weights: torch.Tensor,
    retain_nll: torch.Tensor | None,
    alpha: float,
    forget_count: torch.Tensor,
    retain_count: torch.Tensor | None,
) -> torch.Tensor:
    """-sum(w[:, 1:] * forget_nll) / forget_count + alpha * sum(retain_nll) / retain_count.

    `forget_nll`, `retain_nll`: per-token CE [B, S-1] (0 at ignored labels); `forget_weights`: the selection [B, S]
    in target alignment (>= 0; column 0 never counts)."""
    w = forget_weights[:, 1:].to(forget_nll.dtype)
    loss = -(w * forget_nll).sum() / forget_count.clamp(min=1e-12)
    if alpha and retain_nll is not None and retain_count is not None:
        loss = loss + alpha * retain_term(retain_nll, retain_count)
    return loss


class GradDiff(Objective):
    name = "grad_diff"
    count_names = ("forget_tokens", "retain_tokens")

    def counts(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        w = selection(batch["token_weights"], batch["labels"])
        forget = normalizer_count(batch["labels"], w, self.normalizer)
        return torch.stack([torch.as_tensor(forget).float().cpu(), self.retain_count(batch)])

    def loss(self, model: Any, batch: dict[str, torch.Tensor], counts: torch.Tensor) -> torch.Tensor:
        forget_lp, retain_lp = self.forget_and_retain_logprobs(model, batch)
        w = selection(batch["token_weights"], batch["labels"])
        return grad_diff_loss(
            -forget_lp, w, None if retain_lp is None else -retain_lp, self.alpha, counts[0], counts[1]
        )
