"""Recipes: how one job of the plan runs into a work folder and returns its typed record; one module per
job kind (point, baseline, score, lds) and one line of RECIPES below. A recipe never knows which executor
runs it; an executor never knows what a recipe does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Union

from unlearnspec.run.context import RunContext
from unlearnspec.run.plan import Job, JobKind
from unlearnspec.run.recipes.baseline import run_baseline
from unlearnspec.run.recipes.lds import run_lds
from unlearnspec.run.recipes.point import run_point
from unlearnspec.run.recipes.score import run_score
from unlearnspec.run.results import BaselineRecord, RunRecord

JobRecord = Union[RunRecord, BaselineRecord]
Recipe = Callable[[Job, RunContext, Path], JobRecord]

RECIPES: dict[JobKind, Recipe] = {
    "point": run_point,  # one sweep point: train with the token weights, evaluate, save
    "baseline": run_baseline,  # the untouched model, evaluated once per model and evaluation
    "score": run_score,  # a MAGIC spec's run under MagicCallback, then the exact reverse pass
    "lds": run_lds,  # one LDS retraining of a score run (a subset dropped)
}


def run_job(job: Job, ctx: RunContext, workdir: Path) -> JobRecord:
    """Run `job` with the recipe of its kind."""
    return RECIPES[job.kind](job, ctx, workdir)
