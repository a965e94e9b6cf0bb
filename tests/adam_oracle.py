"""An independent functional Adam/AdamW (+ clipping) unrolled through autograd: the oracle the Adam
reverse pass must equal. Written from the textbook update (bias-corrected m-hat and v-hat), not from
unlearnspec.magic.adam, so a shared mistake is unlikely; float64 only, tiny models only."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from unlearnspec.magic import replay_mode
from unlearnspec.magic.replay import forward_logits, valid_targets
from unlearnspec.train.loss import weighted_token_loss


def safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    """sqrt with derivative 0 (not inf) at 0, so 0 * inf never makes a NaN (the v = 0 trap)."""
    positive = x > 0
    return torch.where(positive, x, torch.ones_like(x)).sqrt() * positive


def adam_unrolled_query(
    model,
    grid,
    plan: Sequence,
    query,
    theta0: Mapping[str, torch.Tensor],
    weights: torch.Tensor,
    *,
    name: str,
    betas=(0.9, 0.999),
    eps: float = 1e-8,
    decays: Sequence[float],
    max_grad_norm: float | None = None,
    create_graph: bool = False,
) -> torch.Tensor:
    """Q(theta_T(weights)) with Adam (L2 in the gradient) or AdamW (decay before the update), from zero moments."""
    assert name in ("adam", "adamw")
    b1, b2 = betas
    names = list(theta0)
    theta = [p.detach().clone().requires_grad_() for p in theta0.values()]
    m = [torch.zeros_like(p) for p in theta]
    v = [torch.zeros_like(p) for p in theta]
    with replay_mode(model):
        for k, step in enumerate(plan, start=1):
            lr = step.lr
            denom = sum(valid_targets(grid.labels[rows]) for rows in step.micro_batches)
            grad = None
            for rows in step.micro_batches:
                logits = forward_logits(model, dict(zip(names, theta)), grid.input_ids[rows], grid.attention_mask[rows])
                loss = weighted_token_loss(logits, grid.labels[rows], weights[rows], denom)
                g = torch.autograd.grad(loss, theta, create_graph=create_graph, materialize_grads=True)
                grad = list(g) if grad is None else [a + b for a, b in zip(grad, g)]
            if max_grad_norm is not None:
                norm = torch.sqrt(sum((g * g).sum() for g in grad))
                scale = torch.clamp(max_grad_norm / (norm + 1e-6), max=1.0)
                grad = [g * scale for g in grad]
            new_theta, new_m, new_v = [], [], []
            for p, g, mi, vi, wd in zip(theta, grad, m, v, decays):
                if name == "adam":
                    g = g + wd * p
                else:
                    p = p * (1 - lr * wd)
                mi = b1 * mi + (1 - b1) * g
                vi = b2 * vi + (1 - b2) * g * g
                m_hat = mi / (1 - b1**k)
                v_hat = vi / (1 - b2**k)
                new_theta.append(p - lr * m_hat / (safe_sqrt(v_hat) + eps))
                new_m.append(mi)
                new_v.append(vi)
            theta, m, v = new_theta, new_m, new_v
            if not create_graph:
                theta = [p.detach().requires_grad_() for p in theta]
                m, v = [x.detach() for x in m], [x.detach() for x in v]
        params = dict(zip(names, theta))
        if hasattr(query, "parts"):
            return torch.stack(list(query.parts(params))).sum()
        return query(params)


def adam_unrolled_scores(model, grid, plan, query, theta0, **kwargs) -> torch.Tensor:
    """dQ/dw at w = 1 by full autograd through the unrolled Adam run ([N, S])."""
    dtype = next(iter(theta0.values())).dtype
    weights = torch.ones(grid.labels.shape, dtype=dtype, requires_grad=True)
    q = adam_unrolled_query(model, grid, plan, query, theta0, weights, create_graph=True, **kwargs)
    (grad,) = torch.autograd.grad(q, weights)
    return grad
