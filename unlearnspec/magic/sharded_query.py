"""The starting adjoints of the sharded reverse pass (`magic.sharded`): this rank's shard of grad Q(theta_T), or of
each question's gradient, with every rank taking the same forwards and backwards (the collectives stay in step)."""

from __future__ import annotations

import math
from typing import Any

import torch


def sharded_query_gradient(query: Any, names: list[str], theta: list[torch.Tensor], comm: Any) -> list[torch.Tensor]:
    """This rank's shard of grad Q at theta. A query in parts (`QueryLoss`) deals its parts over the ranks, every
    rank taking the same number of backwards (a short rank backpropagates a zero-weighted part); any other query
    runs whole on every rank and counts on rank 0 only."""
    params = [p.detach().requires_grad_() for p in theta]
    pdict = dict(zip(names, params))
    total = [torch.zeros_like(p) for p in params]
    rank, world = comm.rank, comm.world_size

    def add(loss: torch.Tensor) -> None:
        if loss.dim() != 0:
            raise ValueError(f"the query must return a scalar loss (got shape {tuple(loss.shape)})")
        torch._foreach_add_(total, list(torch.autograd.grad(loss, params, materialize_grads=True)))

    with comm.forward.saving():
        if hasattr(query, "parts") and hasattr(query, "part_count"):
            mine = iter(query.parts(pdict, rank=rank, world_size=world))
            for _ in range(math.ceil(query.part_count() / world)):
                part = next(mine, None)
                add(part if part is not None else next(iter(query.parts(pdict, rank=0, world_size=world))) * 0.0)
        else:
            loss = sum(query.parts(pdict)) if hasattr(query, "parts") else query(pdict)
            add(loss if rank == 0 else loss * 0.0)
    return total


def sharded_question_gradients(
    query: Any, rows: list[int], names: list[str], theta: list[torch.Tensor], comm: Any
) -> list[torch.Tensor]:
    """This rank's shard of each question's gradient, [K, *shard.shape] per parameter. Every rank runs the same
    forwards and one backward per question (the reduce-scatter sums over ranks; only rank 0's counts)."""
    params = [p.detach().requires_grad_() for p in theta]
    pdict = dict(zip(names, params))
    out = [torch.zeros((len(rows), *p.shape), dtype=p.dtype, device=p.device) for p in params]
    with comm.forward.saving():
        for start in range(0, len(rows), query.batch_size):
            ks = list(range(start, min(start + query.batch_size, len(rows))))
            losses = query.question_losses(pdict, [rows[k] for k in ks])
            if comm.rank != 0:
                losses = losses * 0.0
            for j, k in enumerate(ks):
                grads = torch.autograd.grad(losses[j], params, retain_graph=j + 1 < len(ks), materialize_grads=True)
                for buf, g in zip(out, grads):
                    buf[k] = g
    return out
