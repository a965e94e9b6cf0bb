"""Scores per leaf task of a group query (`magic.query.per: task`): one exact reverse pass per leaf.

Leaf t's query is Q_t = mean over its n_t questions, so Q = sum_t (n_t/n) Q_t. The reverse pass is linear
in its starting adjoint grad Q(theta_T), hence mean scores = sum_t (n_t/n) scores_t (to float summation
order). Chosen: K separate passes over the same recorded trajectory, not one pass with a batched adjoint
[K, ...]: the optimizer adjoints (Adam's m/v, clipping), the double backward, offloading and the DDP
reductions stay exactly the code the mean pass runs and is tested with. Cost: K more reverse passes (time
K x that of the mean pass, training once), the same peak device memory, K [N, S] float32 matrices in host RAM.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from typing_extensions import Unpack

from unlearnspec.errors import UserError
from unlearnspec.magic.query import QueryLoss
from unlearnspec.magic.replay import GridLike
from unlearnspec.magic.replay_options import ReplayOptions
from unlearnspec.magic.reverse import magic_scores
from unlearnspec.magic.trajectory import Trajectory

_NOT_NAME = re.compile(r"[^A-Za-z0-9_]")


@dataclass(frozen=True)
class TaskScores:
    """The score matrix of one leaf task's query."""

    task: str
    """The leaf's lm-eval task name."""
    questions: int
    """n_t, its number of questions (its weight in the mean query is n_t / n)."""
    scores: torch.Tensor
    """[N, S] on the CPU (float32 unless asked otherwise), target alignment."""
    seconds: float
    """Wall seconds of its reverse pass (0 when it reused the mean pass)."""


def leaf_names(group: str, leaves: Sequence[str]) -> dict[str, str]:
    """Leaf task name -> the name token rules use after the dot (and the score file's infix): the leaf's
    name without `<group>_` in front (wmdp_bio_robust_dual_use_virology -> dual_use_virology), other
    characters than letters, digits and `_` replaced by `_`. Refuses two leaves that end up equal."""
    out: dict[str, str] = {}
    for leaf in leaves:
        short = leaf[len(group) + 1 :] if leaf.startswith(f"{group}_") and len(leaf) > len(group) + 1 else leaf
        out[leaf] = _NOT_NAME.sub("_", short)
    seen: dict[str, str] = {}
    for leaf, name in out.items():
        if name in seen:
            raise UserError.one(
                "query",
                f"leaf tasks {seen[name]!r} and {leaf!r} of {group!r} both get the rule name {name!r}; "
                "per-task scores need distinct leaf names. Use `per: mean` for this task.",
                loc="magic.query.per",
            )
        seen[name] = leaf
    return out


def extra_passes(query: QueryLoss) -> int:
    """How many reverse passes `per_task_scores` runs after the mean one (a single leaf reuses the mean)."""
    leaves = query.batch.leaves()
    return 0 if len(leaves) == 1 else len(leaves)


def per_task_scores(
    model: nn.Module,
    grid: GridLike,
    trajectory: Trajectory,
    query: QueryLoss,
    mean_scores: torch.Tensor | None = None,
    **replay: Unpack[ReplayOptions],
) -> dict[str, TaskScores]:
    """Rule leaf name -> scores of that leaf's query, one `magic_scores` pass each with the same `replay` keywords
    (micro_batch_rows, offload_adjoint, offload_states, hessian, second_moment, comm, dtype, ...). A query of a
    single leaf is the mean query: its scores are `mean_scores` when given. Scores are returned as `dtype`
    (default float32; None: the compute dtype) on the CPU. `progress(done, total)` counts reverse steps over all
    the leaves' passes (total = passes x steps)."""
    leaves = query.per_task()
    names = leaf_names(query.batch.task, list(leaves))
    out: dict[str, TaskScores] = {}
    progress, steps = replay.get("progress"), trajectory.total_steps
    for i, (task, leaf_query) in enumerate(leaves.items()):
        started = time.perf_counter()
        if mean_scores is not None and len(leaves) == 1:
            scores = mean_scores
        else:
            tick = None
            if progress is not None:
                tick = functools.partial(_leaf_progress, progress, i * steps, len(leaves) * steps)
            scores = magic_scores(model, grid, trajectory, leaf_query, **(replay | {"progress": tick}))
        seconds = 0.0 if scores is mean_scores else round(time.perf_counter() - started, 3)
        out[names[task]] = TaskScores(task, leaf_query.batch.n_questions, scores.detach().cpu(), seconds)
    return out


def _leaf_progress(progress: Callable[[int, int], None], before: int, total: int, done: int, _steps: int) -> None:
    """One leaf's pass reports `done` of its steps; over all leaves that is `before + done` of `total`."""
    progress(before + done, total)
