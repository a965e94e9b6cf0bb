"""Reference implementations: a stock torch.optim (SGD, Adam, AdamW) training loop that records a
trajectory, and the unrolled autograd metagradient of plain SGD the reverse pass must reproduce (tests
and benchmarks use both; the Adam oracle is written independently in the tests).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from unlearnspec.magic.attention import replay_mode
from unlearnspec.magic.checks import optimizer_tensors
from unlearnspec.magic.optimizers import OPTIMIZERS, OptimizerConfig
from unlearnspec.magic.replay import GridLike, forward_logits, valid_targets
from unlearnspec.magic.reverse import Query
from unlearnspec.magic.trajectory import Step, Trajectory, TrajectoryRecorder, WeightDecay, decay_list
from unlearnspec.train.loss import weighted_token_loss


def trainable_params(model: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters the optimizer updates, by name (what a recorder stores)."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


@dataclass(frozen=True)
class ReferenceRun:
    """A training run as the reference implementations execute it: its steps (rows and LR of each), the weight
    decay (one value or one per parameter name) and the torch optimizer. `sgd_train` runs any optimizer of
    OPTIMIZERS; the unrolled references replay plain SGD only."""

    plan: Sequence[Step]
    weight_decay: WeightDecay = 0.0
    optimizer: OptimizerConfig = OptimizerConfig()


def sgd_train(
    model: nn.Module,
    grid: GridLike,
    run: ReferenceRun,
    *,
    weights: torch.Tensor | None = None,
    recorder: TrajectoryRecorder | None = None,
    use_replay_attention: bool = False,
) -> Trajectory | None:
    """Train `model` in place with a stock torch optimizer: per step, sum over micro-batches of
    weighted_token_loss / D_t, clip if `run.optimizer.max_grad_norm`, then torch.optim.SGD/Adam/AdamW.step().

    D_t counts the valid target tokens of the whole step (normalizer `valid`). Returns the recorded
    trajectory when a recorder is given (its optimizer must be `run.optimizer`). `use_replay_attention`
    trains with the replay kernel.
    """
    plan, weight_decay, optimizer = run.plan, run.weight_decay, run.optimizer
    params = trainable_params(model)
    groups: dict[float, list[torch.Tensor]] = {}
    for (_name, p), wd in zip(params.items(), decay_list(weight_decay, list(params))):
        groups.setdefault(wd, []).append(p)
    param_groups = [{"params": ps, "weight_decay": wd} for wd, ps in groups.items()]
    kind = OPTIMIZERS[optimizer.name]
    options: dict[str, Any] = {key: getattr(optimizer, key) for key in kind.hyperparameters}  # Adam's betas, eps
    if options:
        options["foreach"] = False
    make: Callable[..., torch.optim.Optimizer] = kind.torch_class
    opt = make(param_groups, lr=plan[0].lr, **options)
    if recorder is not None and recorder.optimizer != optimizer:
        raise ValueError(f"the recorder expects {recorder.optimizer}, the run uses {optimizer}")
    context = replay_mode(model) if use_replay_attention else nullcontext()
    device = next(model.parameters()).device
    with context:
        for step in plan:
            if recorder is not None:
                state = optimizer_tensors(opt, params, optimizer.state_names) if optimizer.state_names else None
                recorder.begin_step(params, step.lr, state)
            for group in opt.param_groups:
                group["lr"] = step.lr
            opt.zero_grad(set_to_none=True)
            denom = sum(valid_targets(grid.labels[rows]) for rows in step.micro_batches)
            for rows in step.micro_batches:
                labels = grid.labels[rows].to(device)
                logits = model(
                    input_ids=grid.input_ids[rows].to(device),
                    attention_mask=grid.attention_mask[rows].to(device),
                    use_cache=False,
                ).logits
                w = (
                    weights[rows].to(device)
                    if weights is not None
                    else torch.ones(labels.shape, dtype=logits.dtype, device=device)
                )
                weighted_token_loss(logits, labels, w, denom).backward()
                if recorder is not None:
                    recorder.add_micro_batch(rows)
            if optimizer.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(list(params.values()), optimizer.max_grad_norm)
            opt.step()
    return recorder.finish(params) if recorder is not None else None


def unrolled_query(
    model: nn.Module,
    grid: GridLike,
    run: ReferenceRun,
    query: Query,
    theta0: Mapping[str, torch.Tensor],
    weights: torch.Tensor,
) -> torch.Tensor:
    """Q(theta_T(weights)) by running the SGD steps of `run` functionally from theta0.

    When `weights` requires grad, the result is differentiable in `weights` through all T steps (autograd keeps
    every step's graph); otherwise each step's parameters are detached.
    """
    if run.optimizer.name != "sgd":
        raise ValueError(f"the unrolled reference replays plain SGD, not {run.optimizer.name}")
    plan, create_graph, names = run.plan, weights.requires_grad, list(theta0)
    decays = decay_list(run.weight_decay, names)
    theta = [p.detach().clone().requires_grad_() for p in theta0.values()]
    device = theta[0].device
    with replay_mode(model):
        for step in plan:
            denom = sum(valid_targets(grid.labels[rows]) for rows in step.micro_batches)
            grad: list[torch.Tensor] | None = None
            for rows in step.micro_batches:
                logits = forward_logits(
                    model,
                    dict(zip(names, theta)),
                    grid.input_ids[rows].to(device),
                    grid.attention_mask[rows].to(device),
                )
                loss = weighted_token_loss(
                    logits, grid.labels[rows].to(device), weights[rows.to(weights.device)], denom
                )
                g = list(torch.autograd.grad(loss, theta, create_graph=create_graph, materialize_grads=True))
                grad = g if grad is None else [a + b for a, b in zip(grad, g)]
            assert grad is not None
            theta = [p - step.lr * (g + wd * p) for p, g, wd in zip(theta, grad, decays)]
            if not create_graph:
                theta = [p.detach().requires_grad_() for p in theta]
        params = dict(zip(names, theta))
        if hasattr(query, "parts"):
            return torch.stack(list(query.parts(params))).sum()  # type: ignore[union-attr]
        return query(params)  # type: ignore[operator]


def unrolled_scores(
    model: nn.Module, grid: GridLike, run: ReferenceRun, query: Query, theta0: Mapping[str, torch.Tensor]
) -> torch.Tensor:
    """dQ/dw at w = 1 by full autograd through the unrolled run ([N, S], model dtype). Tiny models only."""
    first = next(iter(theta0.values()))
    weights = torch.ones(grid.labels.shape, dtype=first.dtype, device=first.device, requires_grad=True)
    q = unrolled_query(model, grid, run, query, theta0, weights)
    (grad,) = torch.autograd.grad(q, weights)
    return grad
