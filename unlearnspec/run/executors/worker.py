"""Inside a pool worker process: pin the numerics, threads and GPUs before torch loads, rebuild the run
context and the plan once from picklable inputs, then run each job handed over with the serial
executor's own code (same atomic folder, same record; the temp folder's marker names this process)."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Optional

from unlearnspec.errors import Problem, UserError
from unlearnspec.run.context import RunContext
from unlearnspec.run.options import RunOptions
from unlearnspec.run.plan import Plan

if TYPE_CHECKING:
    from multiprocessing.queues import Queue

GpuSlot = Optional[tuple[str, ...]]
"""The GPUs one worker gets (CUDA_VISIBLE_DEVICES), None or () for none."""

STOPPED = 143  # exit status of a worker the parent stopped (128 + SIGTERM)


@dataclass(frozen=True)
class WorkerSetup:
    """What every worker rebuilds its context and plan from (plain data: it crosses a spawn)."""

    paths: tuple[Path, ...]
    options: RunOptions
    """As the parent's, with the device kind of the workers (cpu, or cuda for jobs given GPUs)."""
    threads: int = 1
    """torch threads per job, unless OMP_NUM_THREADS or the profile's `threads` say otherwise."""
    worlds: tuple[str, ...] = ()
    """The plugin modules of the parent's worlds (`unlearnspec.worlds.plugins()`), imported again here."""


@dataclass(frozen=True)
class JobResult:
    """What a worker reports about one job (the record itself is in the job's folder)."""

    job_id: str
    status: str
    reason: Optional[str]
    seconds: float
    pid: int
    problems: tuple[Problem, ...] = ()
    """A user error the job raised (a bad score file...): the parent stops the run and shows it."""


class Stop(BaseException):
    """The parent stopped this worker: unwind the job (its atomic folder removes the temp folder), then exit."""


@dataclass
class _WorkerState:
    """This worker process's own: its setup and message queue (from the initializer), whether a job runs now, and
    the context and plan built on its first job."""

    setup: Optional[WorkerSetup] = None
    messages: Optional[Queue[str]] = None
    busy: bool = False
    ctx: Optional[RunContext] = None
    plan: Optional[Plan] = None


_state = _WorkerState()


def init_worker(setup: WorkerSetup, slots: Queue[GpuSlot], messages: Queue[str]) -> None:
    """Pool initializer, before anything imports torch: signals, this worker's GPU set, threads, numerics."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which stops the workers
    signal.signal(signal.SIGTERM, _on_sigterm)
    gpus = slots.get()
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(gpus) if gpus else ""  # none: CPU jobs never touch a GPU
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(setup.threads))
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from unlearnspec import worlds

    worlds.load_plugins(setup.worlds)  # the parent's worlds (the toy world), registered here too
    if setup.options.profile is not None:
        worlds.get().pin_for_profile(setup.options.profile)
    _state.setup, _state.messages, _state.busy = setup, messages, False


def _on_sigterm(signum: int, _frame: Optional[FrameType]) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: the cleanup on the way out must not be cut short
    if not _state.busy:
        _exit()
    raise Stop()


def _exit() -> None:
    """Leave now (the pool's loop would catch SystemExit and wait for the next job), after releasing the
    named semaphores libraries made here (tqdm's lock): else multiprocessing's resource tracker warns."""
    from multiprocessing import util

    try:
        util._run_finalizers(0)  # type: ignore[attr-defined]  # what a normal process exit runs; no public API for it
    finally:
        os._exit(STOPPED)


def _say(message: str) -> None:
    if _state.messages is None:
        raise RuntimeError("a pool worker's message queue is set by init_worker")
    _state.messages.put(message)


def _context() -> tuple[RunContext, Plan]:
    """This worker's run context and plan, built on its first job and kept for the next ones."""
    if _state.ctx is None or _state.plan is None:
        from unlearnspec.run.options import make_context, make_plan, quiet_libraries

        setup = _state.setup
        if setup is None:
            raise RuntimeError("a pool worker's setup is set by init_worker")
        quiet_libraries()
        ctx = make_context(setup.options, say=_say)
        _state.ctx, _state.plan = ctx, make_plan(list(setup.paths), setup.options, ctx)
    return _state.ctx, _state.plan


def run_job(job_id: str, job_hash: str) -> JobResult:
    """Run one job of the plan here; a recorded failure is a result, a user error is reported back."""
    from unlearnspec.run.executors.serial import SerialExecutor

    start = time.perf_counter()
    try:
        ctx, plan = _context()
        job = next((j for j in plan.jobs if j.id == job_id), None)
        if job is None or job.hash != job_hash:
            raise UserError.one(
                job_id,
                "a worker built a different plan than the parent (a spec or score file changed "
                "while the run started); rerun the command.",
            )
        start = time.perf_counter()
        _state.busy = True
        try:
            record = SerialExecutor(ctx).run_job(job)
        finally:
            _state.busy = False
    except Stop:  # the job's folders are cleaned up by now; leave without reporting
        _exit()
    except UserError as exc:
        return JobResult(job_id, "error", str(exc), time.perf_counter() - start, os.getpid(), tuple(exc.problems))
    return JobResult(job_id, record.status, record.reason, time.perf_counter() - start, os.getpid())
