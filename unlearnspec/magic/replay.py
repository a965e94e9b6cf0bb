"""Pure functional forward and loss of one micro-batch, shared by the reverse pass, the replayed
SGD steps, the query and the reference implementations: the trainer's loss (`unlearnspec.train.loss`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from unlearnspec.train.loss import IGNORE_INDEX, token_nll, weighted_token_loss


class GridLike(Protocol):
    """The fixed token grid [N, S]: labels are input_ids with IGNORE_INDEX at pads (target alignment)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor


def _token_nll_keeps_float64() -> bool:
    probe = token_nll(torch.zeros(1, 2, 2, dtype=torch.float64), torch.zeros(1, 2, dtype=torch.long))
    return probe.dtype == torch.float64


# `loss.token_nll` upcasts with `.float()`, which would silently round float64 replays to float32;
# until it keeps float64, float64 logits use the same formula here (float32 and below go through it).
_KEEPS_FLOAT64 = _token_nll_keeps_float64()


def replay_token_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """`loss.token_nll`, computed in float64 when the logits are float64."""
    if logits.dtype != torch.float64 or _KEEPS_FLOAT64:
        return token_nll(logits, labels)
    b, s, v = logits.shape
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, v), labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX, reduction="none"
    ).view(b, s - 1)


def replay_weighted_loss(
    logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor, denominator: torch.Tensor | float
) -> torch.Tensor:
    """`loss.weighted_token_loss` (same float64 caveat as `replay_token_nll`)."""
    if logits.dtype != torch.float64 or _KEEPS_FLOAT64:
        return weighted_token_loss(logits, labels, weights, denominator)
    nll = replay_token_nll(logits, labels)
    return (weights[:, 1:].to(nll.dtype) * nll).sum() / denominator


def forward_logits(
    model: nn.Module, params: Mapping[str, torch.Tensor], input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """Logits [B, S, V] of `model` evaluated at `params` (missing names fall back to the model's own)."""
    out = functional_call(
        model, dict(params), (), {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": False}
    )
    return out.logits


def valid_targets(labels: torch.Tensor) -> torch.Tensor:
    """Number of valid target tokens (the `valid` normalizer) of a set of rows."""
    return (labels[:, 1:] != IGNORE_INDEX).sum()
