"""Where a plan's jobs run. One protocol (`base.Executor`); each executor is one module and one line of
EXECUTORS below, which `run --executor NAME` reads (the CLI never names an executor itself)."""

from __future__ import annotations

import difflib
from typing import Optional

from unlearnspec.errors import UserError
from unlearnspec.run.executors.base import Executor, ExecutorOptions
from unlearnspec.run.executors.pool import PoolExecutor
from unlearnspec.run.executors.serial import SerialExecutor
from unlearnspec.run.executors.slurm import SlurmBackend

EXECUTORS: dict[str, type[Executor]] = {
    SerialExecutor.name: SerialExecutor,  # here, one job after another (torchrun: every rank runs every job)
    PoolExecutor.name: PoolExecutor,  # here, up to --jobs N jobs at once in worker processes
    SlurmBackend.name: SlurmBackend,  # every job submitted to SLURM; returns at once
}


def executor_class(name: Optional[str], settings: ExecutorOptions) -> type[Executor]:
    """The executor named NAME; none named: the pool when --jobs or --gpus-per-job ask for it, else serial."""
    if name is None:
        name = PoolExecutor.name if settings.jobs > 1 or settings.gpus_per_job is not None else SerialExecutor.name
    if name not in EXECUTORS:
        close = difflib.get_close_matches(name, list(EXECUTORS), n=2, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise UserError.one(
            "--executor", f"Unknown executor {name!r}.{hint} Available: {', '.join(sorted(EXECUTORS))}."
        )
    return EXECUTORS[name]
