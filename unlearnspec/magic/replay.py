"""Pure functional forward and loss of one micro-batch, shared by the reverse pass, the replayed
SGD steps, the query and the reference implementations: the trainer's loss (`unlearnspec.train.loss`).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.func import functional_call

from unlearnspec.data import GridLike  # noqa: F401 - re-exported: the grid every replay reads
from unlearnspec.train.loss import IGNORE_INDEX


def forward_logits(
    model: nn.Module, params: Mapping[str, torch.Tensor], input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """Logits [B, S, V] of `model` evaluated at `params` (missing names fall back to the model's own). A sharded
    skeleton (`sharded_model.build_skeleton`) takes its rank's shards and all-gathers each module's parameters."""
    sharded = getattr(model, "_unlearnspec_sharded", None)
    if sharded is not None:
        return sharded.logits(params, input_ids, attention_mask)
    out = functional_call(
        model, dict(params), (), {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": False}
    )
    return out.logits


def valid_targets(labels: torch.Tensor) -> torch.Tensor:
    """Number of valid target tokens (the `valid` normalizer) of a set of rows."""
    return (labels[:, 1:] != IGNORE_INDEX).sum()
