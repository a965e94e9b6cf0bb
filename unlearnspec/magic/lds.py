"""Linear datamodeling score (LDS): do MAGIC scores predict what dropping many tokens at once does?

A metagradient is the derivative of the query loss Q at the recorded weights w. Unlearning changes many
weights by finite amounts. LDS measures whether the linear prediction holds for such changes:
1. draw random subsets D of rows (or tokens), each `fraction` of the candidates;
2. retrain the recorded run with w = 0 on D (same rows per step, same order, lr schedule and optimizer:
   the replay's forward step, `reverse._Replay.step`, with those weights) and evaluate Q;
3. LDS = Spearman(actual Q(D) - Q(reference), predicted -sum_{D} score x w) over the subsets. The reference
   is the same replay with nothing dropped, so both sides share one arithmetic.

This module holds the pieces: the recorded step plan on disk (`trajectory.json`), subsets, predictions,
the retraining and the statistics. `lds_job.py` runs them as jobs of the plan.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn
from typing_extensions import NotRequired, TypedDict

from unlearnspec.magic.attention import replay_mode
from unlearnspec.magic.collective import Collective, default_collective
from unlearnspec.magic.optimizers import OptimizerConfig
from unlearnspec.magic.replay import GridLike
from unlearnspec.magic.reverse import _Replay
from unlearnspec.magic.trajectory import RamStore, Step, Trajectory
from unlearnspec.spec.training import LdsSpec
from unlearnspec.train.loss import IGNORE_INDEX

TRAJECTORY_FILE = "trajectory.json"
TRAJECTORY_FORMAT = 1
BOOTSTRAP_RESAMPLES = 2000
"""Resamples of the bootstrap 95% interval of the Spearman correlation (percentile method)."""


# --------------------------------------------------------------------------- the recorded step plan
def save_trajectory_plan(folder: Path, trajectory: Trajectory) -> Path:
    """Write what a retraining needs besides theta_0: rows of every micro-batch, lrs, optimizer, decay."""
    from unlearnspec.safeio import write_json_atomic

    decay = trajectory.weight_decay
    payload = {
        "format": TRAJECTORY_FORMAT,
        "schedule": trajectory.schedule,
        "param_names": list(trajectory.param_names),
        "weight_decay": dict(decay) if isinstance(decay, Mapping) else float(decay),
        "optimizer": {**asdict(trajectory.optimizer), "betas": list(trajectory.optimizer.betas)},
        "steps": [{"lr": s.lr, "micro_batches": [mb.tolist() for mb in s.micro_batches]} for s in trajectory.steps],
    }
    path = folder / TRAJECTORY_FILE
    write_json_atomic(path, payload)
    return path


def load_trajectory_plan(folder: Path, n_rows: Optional[int] = None) -> Trajectory:
    """The recorded steps of a score run (an empty state store: the caller puts theta_0 at step 0). Every
    number is validated as a spec's is (finite, in range, an int where an int is meant), and with `n_rows`
    every row id must index the grid: a tampered file is a UserError naming the field, never a traceback
    or a silently different retraining."""
    from pydantic import ValidationError

    from unlearnspec.errors import UserError
    from unlearnspec.magic.trajectory_file import TrajectoryFile
    from unlearnspec.safeio import read_json

    path = folder / TRAJECTORY_FILE
    fix = "Rerun the score spec (score runs record it since unlearnspec 0.9) to validate it by LDS."
    data = read_json(path, "recorded step plan", f"no {TRAJECTORY_FILE} in the score run. {fix}", fix)
    try:
        plan = TrajectoryFile.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "top level"
        raise UserError.one(
            str(path), f"not a step plan this version can read ({loc}: {first['msg']}). {fix}", loc=loc
        ) from None
    for i, s in enumerate(plan.steps):
        for j, mb in enumerate(s.micro_batches):
            bad = next((r for r in mb if n_rows is not None and r >= n_rows), None)
            if bad is not None:
                raise UserError.one(
                    str(path),
                    f"row {bad} is beyond the {n_rows} rows of this spec's grid; the plan is not this run's. {fix}",
                    loc=f"steps.{i}.micro_batches.{j}",
                )
    opt = plan.optimizer
    steps = tuple(
        Step(s.lr, tuple(torch.tensor(mb, dtype=torch.long, device="cpu") for mb in s.micro_batches))
        for s in plan.steps
    )
    return Trajectory(
        steps,
        RamStore(),
        plan.schedule,
        plan.weight_decay,
        tuple(plan.param_names),
        OptimizerConfig(
            name=opt.name,
            betas=(opt.betas[0], opt.betas[1]),
            eps=opt.eps,
            initial_step=opt.initial_step,
            max_grad_norm=opt.max_grad_norm,
        ),
    )


# --------------------------------------------------------------------------- subsets and predictions
def candidates(weights: torch.Tensor, labels: torch.Tensor, unit: str) -> torch.Tensor:
    """What a subset may drop: rows with a weighted valid target, or flat indices of such tokens (target
    alignment: column 0 never counts)."""
    active = (labels != IGNORE_INDEX) & (weights != 0)
    active[:, 0] = False
    if unit == "row":
        return active.any(dim=1).nonzero().flatten()
    return active.flatten().nonzero().flatten()


def drop_set(lds: LdsSpec, weights: torch.Tensor, labels: torch.Tensor, index: int) -> torch.Tensor:
    """Sorted ids (rows or flat tokens) subset `index` drops: ceil(fraction x candidates), at least one."""
    pool = candidates(weights, labels, lds.unit)
    if pool.numel() == 0:
        raise ValueError("no weighted valid target token to drop")
    k = max(1, math.ceil(lds.fraction * pool.numel()))
    gen = torch.Generator().manual_seed(lds.seed * 100_003 + index)
    order = torch.randperm(pool.numel(), generator=gen, device="cpu")[:k]  # host-side ids, as the grid's
    return pool[order.to(pool.device)].sort().values


def dropped_mask(shape: Sequence[int], drop: torch.Tensor, unit: str) -> torch.Tensor:
    """Boolean [N, S] mask of the dropped tokens."""
    mask = torch.zeros(tuple(shape), dtype=torch.bool, device="cpu")  # the grid and weights live on the host
    if unit == "row":
        mask[drop] = True
    else:
        mask.view(-1)[drop] = True
    return mask


def predicted_change(scores: torch.Tensor, weights: torch.Tensor, mask: torch.Tensor) -> float:
    """First-order change of Q when the masked weights go to 0: sum of score x (0 - w) over them."""
    return -float((scores.double() * weights.double())[mask].sum())


# --------------------------------------------------------------------------- retraining
def retrained_params(
    model: nn.Module,
    grid: GridLike,
    trajectory: Trajectory,
    theta0: Sequence[torch.Tensor],
    weights: torch.Tensor,
    comm: Optional[Collective] = None,
) -> dict[str, torch.Tensor]:
    """theta_T of the recorded run replayed from theta_0 with per-token `weights` [N, S] (the optimizer starts
    fresh, as the recorded run did): the replay's own forward step, so it matches the reverse pass's arithmetic."""
    if trajectory.optimizer.initial_step != 0:
        raise ValueError("LDS retraining needs a run that started with a fresh optimizer")
    with replay_mode(model):
        replay = _Replay(model, grid, trajectory, hessian=False, comm=comm or default_collective())
        replay.weights = weights
        theta = [p.detach().clone().to(replay.device) for p in theta0]
        state = [theta] + [[torch.zeros_like(p) for p in theta] for _ in replay.rule.state_names]
        for t in range(trajectory.total_steps):
            state = replay.step(state, t)
    return dict(zip(trajectory.param_names, state[0]))


def query_value(model: nn.Module, query: Any, params: Mapping[str, torch.Tensor]) -> float:
    """Q at `params` (the query's whole question set, on this process)."""
    with replay_mode(model), torch.no_grad():
        return float(query(dict(params)))


# --------------------------------------------------------------------------- statistics
def average_ranks(x: Sequence[float]) -> list[float]:
    """Ranks 1..n with ties given their average rank (as scipy.stats.rankdata)."""
    order = sorted(range(len(x)), key=lambda i: x[i])
    ranks = [0.0] * len(x)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and x[order[j + 1]] == x[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def pearson(a: Sequence[float], b: Sequence[float]) -> float:
    """Pearson correlation; NaN when either side is constant."""
    n = len(a)
    ma, mb = sum(a) / n, sum(b) / n
    da, db = [x - ma for x in a], [y - mb for y in b]
    sa, sb = math.sqrt(sum(x * x for x in da)), math.sqrt(sum(y * y for y in db))
    if sa == 0 or sb == 0:
        return float("nan")
    return sum(x * y for x, y in zip(da, db)) / (sa * sb)


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation (Pearson of average ranks)."""
    return pearson(average_ranks(a), average_ranks(b))


class LdsSummary(TypedDict):
    """The `lds` entry of a score run's scores.json (and `<score folder>.lds/summary.json`): what doctor and the
    `lds` command read. Non-finite numbers are written as null."""

    spearman: Optional[float]
    pearson: Optional[float]
    spearman_ci95: list[Optional[float]]
    """Bootstrap 95% interval of Spearman (pairs resampled, seeded by `seed`)."""
    scale_ratio: Optional[float]
    """||predicted|| / ||actual||: 1 when the linear prediction has the right size."""
    subsets: int
    fraction: float
    unit: str
    seed: int
    dropped_per_subset: int
    bootstrap_resamples: int
    reference_query: NotRequired[float]
    """Q of the reference retraining (no subset dropped)."""
    retrain_seconds: NotRequired[float]
    method: NotRequired[str]
    new: NotRequired[bool]
    """In what `write_lds_summary` returns only: the entry changed (not written to disk)."""


def summarize(actual: Sequence[float], predicted: Sequence[float], lds: LdsSpec, dropped: int) -> LdsSummary:
    """Spearman, Pearson, a bootstrap 95% interval of Spearman (pairs resampled, seeded by `lds.seed`), and the
    scale ratio ||predicted|| / ||actual|| (1 = the linear prediction has the right size)."""
    if len(actual) != len(predicted) or len(actual) < 3:
        raise ValueError("LDS needs at least 3 (actual, predicted) pairs")
    n = len(actual)
    gen = torch.Generator().manual_seed(lds.seed)
    boot = []
    for _ in range(BOOTSTRAP_RESAMPLES):
        idx = torch.randint(n, (n,), generator=gen, device="cpu").tolist()
        rho = spearman([actual[i] for i in idx], [predicted[i] for i in idx])
        if not math.isnan(rho):
            boot.append(rho)
    boot.sort()
    lo = boot[int(0.025 * (len(boot) - 1))] if boot else float("nan")
    hi = boot[int(math.ceil(0.975 * (len(boot) - 1)))] if boot else float("nan")
    norm_a = math.sqrt(sum(x * x for x in actual))
    norm_p = math.sqrt(sum(x * x for x in predicted))
    return {
        "spearman": spearman(actual, predicted),
        "pearson": pearson(actual, predicted),
        "spearman_ci95": [lo, hi],
        "scale_ratio": norm_p / norm_a if norm_a > 0 else float("nan"),
        "subsets": n,
        "fraction": lds.fraction,
        "unit": lds.unit,
        "seed": lds.seed,
        "dropped_per_subset": dropped,
        "bootstrap_resamples": BOOTSTRAP_RESAMPLES,
    }


def lds_table(path: Path) -> Optional[dict[str, Any]]:
    """The `lds` entry of a scores.json, or None (no file, unreadable, or not validated)."""
    from unlearnspec.safeio import read_json_lenient

    data = read_json_lenient(path)
    entry = data.get("lds") if isinstance(data, dict) else None
    rho = entry.get("spearman") if isinstance(entry, dict) else None
    # a correlation: a finite number in [-1, 1] (not a bool, not NaN from a tampered or older file)
    ok = isinstance(rho, (int, float)) and not isinstance(rho, bool) and -1.0 <= rho <= 1.0
    return entry if ok else None
