"""The signed per-token weighted loss, as small pure functions the trainer and MAGIC share.

Alignment is `target`: `weights[:, t]` and `labels[:, t]` refer to the prediction of token t from
positions < t, so column 0 never contributes. A negative weight is gradient ascent on that token;
a zero weight (or label -100) contributes exactly nothing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from unlearnspec.data import IGNORE_INDEX
from unlearnspec.spec.sections import Normalizer

__all__ = ["IGNORE_INDEX", "Normalizer", "normalizer_count", "token_nll", "weighted_nll_loss", "weighted_token_loss"]


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each target token, [B, S-1]; 0 where the label is IGNORE_INDEX.

    `logits` is [B, S, V] (position t predicts token t+1); `labels` is [B, S] in target alignment.
    """
    b, s, v = logits.shape
    if logits.dtype not in (torch.float32, torch.float64):
        logits = logits.float()  # half-precision logits: compute the CE in float32; float64 stays float64
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, v),
        labels[:, 1:].reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view(b, s - 1)


def normalizer_count(labels: torch.Tensor, weights: torch.Tensor, kind: Normalizer) -> torch.Tensor:
    """The divisor of one batch (sum these over an accumulation window before dividing).

    `selected`: valid target tokens with nonzero weight (what masking with -100 gives);
    `valid`: all valid target tokens; `batch_tokens`: rows x (S-1); `abs_weight`: sum |w| over valid.
    """
    valid = labels[:, 1:] != IGNORE_INDEX
    w = weights[:, 1:]
    if kind == "selected":
        return (valid & (w != 0)).sum()
    if kind == "valid":
        return valid.sum()
    if kind == "batch_tokens":
        return torch.tensor(valid.numel(), device=labels.device)
    if kind == "abs_weight":
        return (w.abs() * valid).sum()
    raise ValueError(f"unknown normalizer {kind!r}")


def weighted_nll_loss(nll: torch.Tensor, weights: torch.Tensor, denominator: torch.Tensor | float) -> torch.Tensor:
    """The weighted loss itself: sum_{i,t} w[i,t] * nll[i,t] / denominator.

    `nll` is [B, S-1] per-token cross-entropy (0 at ignored labels) from `token_nll` or a fused head;
    `weights` is [B, S] in target alignment (column 0 never counts). `denominator` is the normalizer
    count of the whole optimizer step (accumulation window, all ranks), so micro-batch losses add up to
    the loss of the full batch. The trainer, the MAGIC replay and the reference implementations all call this.
    """
    w = weights[:, 1:].to(nll.dtype)
    return (w * nll).sum() / denominator


def weighted_token_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor,
    denominator: torch.Tensor | float,
) -> torch.Tensor:
    """`weighted_nll_loss` of full logits [B, S, V] (float64 logits stay float64)."""
    return weighted_nll_loss(token_nll(logits, labels), weights, denominator)
