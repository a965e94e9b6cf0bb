"""An attention kernel for MAGIC replays: plain softmax attention in the input dtype.

`sdpa` has no double backward on CPU and `eager` runs its softmax in float32 (which breaks float64
exactness); this one is composed of differentiable ops only, so HVPs through it are exact.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from typing_extensions import TypedDict, Unpack

REPLAY_ATTENTION = "unlearnspec_replay"


class KernelKeywords(TypedDict, total=False):
    """The keywords transformers passes an attention kernel that this one reads. Models pass more (position ids, a
    sliding window, ...), which it ignores, as transformers' `eager_attention_forward` does."""

    scaling: float
    """The factor of the attention logits (1 / sqrt(head_dim) in most models)."""
    dropout: float
    """Attention dropout; replays run with 0 (model.eval())."""


def replay_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Unpack[KernelKeywords],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as transformers' `eager_attention_forward`, with the softmax kept in `query.dtype`."""
    if "scaling" not in kwargs:
        raise TypeError("replay_attention() needs the keyword argument 'scaling', as eager_attention_forward does")
    scaling = kwargs["scaling"]
    if kwargs.get("dropout", 0.0):
        raise RuntimeError("MAGIC replay attention got dropout > 0; replays must run with dropout 0 (model.eval()).")
    if key.shape[1] != query.shape[1]:  # grouped-query attention: share each KV head across its query heads
        repeat = query.shape[1] // key.shape[1]
        key = key.repeat_interleave(repeat, dim=1)
        value = value.repeat_interleave(repeat, dim=1)
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        weights = weights + attention_mask[:, :, :, : key.shape[-2]]
    weights = torch.softmax(weights, dim=-1)
    out = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return out, weights


def register_replay_attention() -> str:
    """Register the kernel (and its additive float mask) with transformers; idempotent. Returns its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(REPLAY_ATTENTION, replay_attention)
    AttentionMaskInterface.register(REPLAY_ATTENTION, eager_mask)
    return REPLAY_ATTENTION


def _configs(model: nn.Module) -> list[object]:
    seen: dict[int, object] = {}
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "_attn_implementation"):
            seen.setdefault(id(config), config)
    return list(seen.values())


@contextmanager
def replay_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run `model` in eval mode with the replay attention; restores mode and attention on exit."""
    name = register_replay_attention()
    configs = _configs(model)
    before = [c._attn_implementation for c in configs]  # type: ignore[attr-defined]
    was_training = model.training
    try:
        for config in configs:
            config._attn_implementation = name  # type: ignore[attr-defined]
        model.eval()
        yield model
    finally:
        for config, impl in zip(configs, before):
            config._attn_implementation = impl  # type: ignore[attr-defined]
        model.train(was_training)


def use_replay_attention(model: nn.Module) -> None:
    """Switch `model` to the replay kernel for good (MAGIC runs train with it, so replay == training)."""
    name = register_replay_attention()
    for config in _configs(model):
        config._attn_implementation = name  # type: ignore[attr-defined]
