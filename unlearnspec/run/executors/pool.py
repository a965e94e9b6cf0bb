"""The pool executor: up to N ready jobs at once, each in a worker process of a spawn-context
`concurrent.futures.ProcessPoolExecutor`. This process only keeps dependency order (a job is handed over
once every job it waits for has ended), records outcomes and writes results.json; workers run the jobs
with the serial executor's code. Ctrl-C or SIGTERM stops the workers; a rerun resumes."""

from __future__ import annotations

import multiprocessing
import os
import queue
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, ClassVar, Optional

from unlearnspec.errors import UserError
from unlearnspec.run.context import RunContext
from unlearnspec.run.executors.base import ExecutorOptions, JobStatus, Outcome
from unlearnspec.run.executors.gpus import assign_gpus, visible_gpus
from unlearnspec.run.executors.local import LocalRun, folder_status, sigterm_as_interrupt
from unlearnspec.run.executors.worker import GpuSlot, JobResult, WorkerSetup, init_worker, run_job
from unlearnspec.run.options import RunOptions, make_context, make_plan
from unlearnspec.run.plan import Job, Plan, plan_layouts
from unlearnspec.run.progress import RunDisplay

if TYPE_CHECKING:
    from multiprocessing.queues import Queue

STOP_GRACE_S = 20.0
"""How long a stopped worker may take to unwind its job; then it is killed (its temp folder stays,
marked with its dead pid, and the next run removes it)."""


class PoolExecutor:
    """Runs ready jobs in parallel worker processes, each with its own GPU set (or none)."""

    name: ClassVar[str] = "pool"
    under_torchrun: ClassVar[bool] = False
    detached: ClassVar[bool] = False
    work: ClassVar[Callable[[str, str], JobResult]] = staticmethod(run_job)
    """What a worker runs per job (id, hash); a module-level function, since it crosses a spawn."""

    def __init__(
        self, ctx: RunContext, options: RunOptions, jobs: int, slots: list[GpuSlot], display: RunDisplay
    ) -> None:
        self.ctx, self.options, self.jobs, self.slots, self.display = ctx, options, jobs, slots, display
        self.paths: list[Path] = []
        self._run: Optional[LocalRun] = None

    @classmethod
    def create(cls, options: RunOptions, settings: ExecutorOptions, display: RunDisplay) -> "PoolExecutor":
        if settings.nproc > 1 or int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise UserError.one(
                "--nproc",
                "the pool runs each job as one process; --nproc (torchrun ranks per job) "
                "works with the serial executor only. Drop --jobs/--gpus-per-job, or drop --nproc.",
            )
        device = options.device or "auto"
        if device.startswith("cuda:"):
            raise UserError.one(
                "--device",
                f"{device} names one GPU, but the pool gives each job its own GPUs; pass "
                "--device cuda (or nothing) with --gpus-per-job G.",
            )
        per_job = settings.gpus_per_job
        if per_job is None:
            per_job = 1 if device != "cpu" and visible_gpus() else 0
        if per_job > 0 and device == "cpu":
            raise UserError.one("--gpus-per-job", f"{per_job} GPU(s) per job with --device cpu; pass one or the other.")
        if per_job == 0 and device == "cuda":
            raise UserError.one(
                "--gpus-per-job",
                "--device cuda with --gpus-per-job 0; give each job a GPU (--gpus-per-job 1) or drop --device.",
            )
        slots = assign_gpus(visible_gpus() if per_job else [], settings.jobs, per_job)
        options = replace(options, device="cuda" if per_job else "cpu")
        ctx = make_context(options, say=display.say)
        return cls(ctx, options, settings.jobs, slots, display)

    @property
    def where(self) -> str:
        gpus = f" with {len(self.slots[0])} GPU(s) each" if self.slots and self.slots[0] else ""
        return f"on {self.ctx.device.split(':')[0]}, up to {self.jobs} at once{gpus} (pool)"

    def make_plan(self, paths: list[Path]) -> Plan:
        self.paths = list(paths)
        plan = make_plan(self.paths, self.options, self.ctx)
        plan_layouts(plan, lambda job: 1, lambda job: "one process per pool job")  # the spec's batch in one process
        return plan

    def submit(self, plan: Plan) -> None:
        self._run = LocalRun(plan, self.ctx, self.display, self.options.retry_failed)
        self._run.prepare(workers=self.jobs)
        if self.ctx.toy and plan.jobs:
            _ = self.ctx.assets.world  # built here once, not by several workers at the same time

    def status(self, plan: Plan) -> dict[str, JobStatus]:
        return self._run.status() if self._run is not None and self._run.plan is plan else folder_status(plan)

    def wait(self) -> Outcome:
        run = self._run
        if run is None:
            raise RuntimeError("wait() before submit()")
        spawn = multiprocessing.get_context("spawn")  # fresh interpreters: numerics and GPUs pinned before torch loads
        slots, messages = spawn.Queue(), spawn.Queue()
        for slot in self.slots:
            slots.put(slot)
        from unlearnspec import worlds

        setup = WorkerSetup(paths=tuple(self.paths), options=self.options, worlds=worlds.plugins())
        pool = ProcessPoolExecutor(
            max_workers=self.jobs, mp_context=spawn, initializer=init_worker, initargs=(setup, slots, messages)
        )
        error: Optional[BaseException] = None
        try:
            with sigterm_as_interrupt():
                error = self._loop(run, pool, messages)
        except KeyboardInterrupt:
            run.outcome.interrupted = True
            self._stop(pool)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            self._drain(messages)
            for q in (slots, messages):
                q.close()
                q.join_thread()
        if error is not None:  # a refusal or crash inside a job: no empty output folder of this run stays behind
            run.abandon()
            raise error
        return run.close()

    def _loop(self, run: LocalRun, pool: ProcessPoolExecutor, messages: Queue[str]) -> Optional[BaseException]:
        """Hand over ready jobs while workers are free; record each result. After a job raised, the running
        ones finish and nothing new starts (as the serial executor stops); the error is returned."""
        waiting = list(run.plan.jobs)
        ready_to_run: set[str] = set()
        running: dict[Future[JobResult], Job] = {}
        error: Optional[BaseException] = None
        while waiting or running:
            for job in list(waiting) if error is None else []:
                if job.id not in ready_to_run:
                    if not run.ready(job):
                        continue
                    if run.decide(job) == "ended":
                        waiting.remove(job)
                        continue
                    ready_to_run.add(job.id)
                if len(running) < self.jobs:
                    waiting.remove(job)
                    run.started(job)
                    running[pool.submit(type(self).work, job.id, job.hash)] = job
            if not running:
                if waiting and error is None:
                    raise RuntimeError(f"jobs wait for jobs outside the plan: {[j.id for j in waiting][:5]}")
                break
            finished, _ = wait(running, timeout=0.25, return_when=FIRST_COMPLETED)
            self._drain(messages)
            for future in finished:
                job = running.pop(future)
                problem = future.exception()
                result = future.result() if problem is None else None
                if result is not None and not result.problems:
                    run.finished(job, result.status, result.reason, result.seconds)
                    continue
                run.running.discard(job.id)
                if isinstance(problem, BrokenProcessPool):  # a worker died outright (the OOM killer, a crash)
                    problem = RuntimeError(
                        f"the worker process running {job.id} died ({problem}); finished jobs are "
                        "kept, rerun the command to resume"
                    )
                error = error or (UserError(list(result.problems)) if result is not None else problem)
                self.display.say(f"[{job.id}] stopped the run: {result.reason if result else repr(problem)}")
        return error

    def _drain(self, messages: Queue[str]) -> None:
        """Print what the workers said (in the order they said it)."""
        while True:
            try:
                self.display.say(messages.get_nowait())
            except (queue.Empty, OSError, ValueError):
                return

    def _stop(self, pool: ProcessPoolExecutor) -> None:
        """SIGTERM every worker (each unwinds its job, whose atomic folder removes its temp folder), then
        kill the ones still there after the grace period."""
        workers = list(getattr(pool, "_processes", {}).values())  # the pool's own processes (no public API before 3.14)
        for proc in workers:
            if proc.is_alive():
                proc.terminate()
        deadline = time.monotonic() + STOP_GRACE_S
        for proc in workers:
            proc.join(max(0.0, deadline - time.monotonic()))
        killed = [proc for proc in workers if proc.is_alive()]
        for proc in killed:
            proc.kill()
            proc.join(5)
        running = len(self._run.running) if self._run is not None else 0
        self.display.say(
            f"[interrupted] stopped {len(workers)} worker(s) with {running} running job(s)"
            + (
                f"; {len(killed)} did not stop in {STOP_GRACE_S:.0f} s and were killed: their temp folders "
                "stay until the next run removes them"
                if killed
                else "; their temp folders were removed"
            )
        )
