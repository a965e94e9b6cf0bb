"""The start of every reverse pass: the gradient of the query loss at the final parameters, whole or one
vector per question (the batched adjoints of `magic.query.per: question`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Protocol, Union

import torch

from unlearnspec.magic.collective import Alone, Collective


class BatchedQuery(Protocol):
    """A query loss given in parts (e.g. one per batch of questions) that sum to Q(params)."""

    def parts(self, params: Mapping[str, torch.Tensor]) -> Iterable[torch.Tensor]: ...


Query = Union[Callable[[Mapping[str, torch.Tensor]], torch.Tensor], BatchedQuery]


def query_gradient(
    query: Query, names: list[str], theta: list[torch.Tensor], comm: Collective | None = None
) -> list[torch.Tensor]:
    """grad Q at theta, accumulated over the query's parts so only one part's graph is alive at a time.

    Under several ranks each rank differentiates its share of the parts (`parts(params, rank, world_size)`;
    a plain callable query runs on rank 0) and the partial gradients are all-reduced.
    """
    if getattr(comm, "sharded", False):  # theta is this rank's shards (FSDP)
        from unlearnspec.magic.sharded_query import sharded_query_gradient

        return sharded_query_gradient(query, names, theta, comm)
    comm = comm or Alone()
    params = [p.detach().requires_grad_() for p in theta]
    pdict = dict(zip(names, params))
    if hasattr(query, "parts"):
        shard = {"rank": comm.rank, "world_size": comm.world_size} if comm.world_size > 1 else {}
        parts = query.parts(pdict, **shard)  # type: ignore[union-attr]
    else:
        parts = [query(pdict)] if comm.rank == 0 else []  # type: ignore[operator]
    total: list[torch.Tensor] | None = None
    for part in parts:
        if part.dim() != 0:
            raise ValueError(f"the query must return a scalar loss (got shape {tuple(part.shape)})")
        grads = list(torch.autograd.grad(part, params, materialize_grads=True))
        total = grads if total is None else list(torch._foreach_add(total, grads))
    if total is None and comm.world_size == 1:
        raise ValueError("the query produced no loss")
    if total is None:  # more ranks than query parts: this rank adds nothing
        total = [torch.zeros_like(p) for p in params]
    comm.all_reduce_(total)
    return total


def question_gradients(
    query: "QuestionQuery",
    rows: Sequence[int],
    names: list[str],
    theta: list[torch.Tensor],
    comm: Collective | None = None,
) -> list[torch.Tensor]:
    """The gradients of the K questions `rows` of `query` (each question's own summed answer loss l_q, not
    divided by the number of questions), stacked per parameter: [K, *param.shape]. One forward per batch of
    questions, then one backward per question through its graph. Under several ranks each rank computes
    the questions k with k % world_size == rank and the stacks are all-reduced."""
    if getattr(comm, "sharded", False):  # theta is this rank's shards (FSDP)
        from unlearnspec.magic.sharded_query import sharded_question_gradients

        return sharded_question_gradients(query, list(rows), names, theta, comm)
    comm = comm or Alone()
    params = [p.detach().requires_grad_() for p in theta]
    pdict = dict(zip(names, params))
    out = [torch.zeros((len(rows), *p.shape), dtype=p.dtype, device=p.device) for p in params]
    mine = [k for k in range(len(rows)) if k % comm.world_size == comm.rank]
    for start in range(0, len(mine), query.batch_size):
        ks = mine[start : start + query.batch_size]
        losses = query.question_losses(pdict, [rows[k] for k in ks])
        for j, k in enumerate(ks):
            grads = torch.autograd.grad(losses[j], params, retain_graph=j + 1 < len(ks), materialize_grads=True)
            for buf, g in zip(out, grads):
                buf[k] = g
    comm.all_reduce_(out)
    return out


class QuestionQuery(Protocol):
    """A query whose questions can be differentiated one by one (`unlearnspec.magic.query.QueryLoss`)."""

    batch_size: int

    def question_losses(self, params: Mapping[str, torch.Tensor], rows: Sequence[int]) -> torch.Tensor: ...
