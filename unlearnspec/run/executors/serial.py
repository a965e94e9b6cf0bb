"""The serial executor: runs the plan's jobs one after another in this process (or in every rank of a
torchrun group), skipping finished ones, each into an atomic folder it owns, then writes results.json.

It knows jobs, folders and records, not MAGIC: what a job does is the recipe's business.
"""

from __future__ import annotations

import shutil
import time
from contextlib import nullcontext
from pathlib import Path
from typing import ClassVar, Optional, Union

from unlearnspec.errors import UserError
from unlearnspec.run.context import RunContext
from unlearnspec.run.executors.base import ExecutorOptions, JobStatus, Outcome
from unlearnspec.run.executors.local import LocalRun, folder_status, sigterm_as_interrupt
from unlearnspec.run.jobstate import POINT_FILE
from unlearnspec.run.options import RunOptions, make_context, make_plan, quiet_libraries
from unlearnspec.run.plan import Job, Plan, plan_layouts
from unlearnspec.run.progress import RunDisplay
from unlearnspec.run.results import BaselineRecord, RunRecord
from unlearnspec.run.rundirs import atomic_dir, provenance, write_json
from unlearnspec.spec.load import project_root


class SerialExecutor:
    """Runs every job here, one after another, with resume: finished jobs are skipped."""

    name: ClassVar[str] = "serial"
    under_torchrun: ClassVar[bool] = True
    detached: ClassVar[bool] = False

    def __init__(
        self,
        ctx: RunContext,
        retry_failed: bool = False,
        display: Optional[RunDisplay] = None,
        options: Optional[RunOptions] = None,
    ) -> None:
        self.ctx = ctx
        self.retry_failed = retry_failed
        self.display = display or RunDisplay()
        self.options = options or RunOptions(retry_failed=retry_failed)
        self._run: Optional[LocalRun] = None

    @classmethod
    def create(cls, options: RunOptions, settings: ExecutorOptions, display: RunDisplay) -> "SerialExecutor":
        if settings.jobs > 1 or settings.gpus_per_job:
            flag = f"--jobs {settings.jobs}" if settings.jobs > 1 else f"--gpus-per-job {settings.gpus_per_job}"
            raise UserError.one(
                "--executor",
                f"the serial executor runs one job at a time in this process; {flag} "
                "needs the pool executor. Drop `--executor serial` (or pass `--executor pool`).",
            )
        quiet_libraries()
        ctx = make_context(options, say=display.say, progress=display.progress)
        return cls(ctx, retry_failed=options.retry_failed, display=display, options=options)

    @property
    def where(self) -> str:
        return f"on {self.ctx.device}" + (f", {self.ctx.world_size} processes" if self.ctx.world_size > 1 else "")

    def make_plan(self, paths: list[Path]) -> Plan:
        plan = make_plan(paths, self.options, self.ctx)
        # every rank of this launch trains each job: its global batch must split over them (refused with the fix)
        plan_layouts(plan, lambda job: self.ctx.world_size, lambda job: "the processes of this launch")
        return plan

    def submit(self, plan: Plan) -> None:
        if self.ctx.world_size > 1:  # under torchrun: join the group once; every rank runs every job
            from unlearnspec.train import dist

            parallel = plan.specs[0].spec.parallel_or_default
            dist.init(parallel.backend, parallel.timeout_s)
        self._run = LocalRun(plan, self.ctx, self.display, self.retry_failed)
        self._run.prepare()

    def status(self, plan: Plan) -> dict[str, JobStatus]:
        return self._run.status() if self._run is not None and self._run.plan is plan else folder_status(plan)

    def wait(self) -> Outcome:
        run = self._run
        if run is None:
            raise RuntimeError("wait() before submit()")
        try:
            with sigterm_as_interrupt() if self.ctx.world_size == 1 else nullcontext():
                self._run_all(run)
        except KeyboardInterrupt:  # the job's atomic folder removed its temp folder on the way out
            if self.ctx.world_size > 1:
                raise
            run.outcome.interrupted = True
        except BaseException:  # a refusal or crash inside a job: no empty output folder of this run stays behind
            run.abandon()
            raise
        return run.close()

    def _run_all(self, run: LocalRun) -> None:
        for job in run.plan.jobs:
            if run.decide(job) == "ended":
                continue
            run.started(job)
            start = time.perf_counter()
            record = self.run_job(job)
            if self.ctx.world_size > 1:
                from unlearnspec.train import dist

                dist.barrier()  # rank 0 evaluated and wrote; the next job starts together
            run.finished(job, record.status, record.reason, time.perf_counter() - start)

    def run(self, plan: Plan) -> Outcome:
        """submit + wait: the whole plan here."""
        self.submit(plan)
        return self.wait()

    def run_job(self, job: Job) -> Union[RunRecord, BaselineRecord]:
        """One job into its atomic folder (rank 0; other ranks train in a private scratch folder)."""
        from unlearnspec.run.recipes import run_job

        if not self.ctx.is_main:
            import tempfile

            with tempfile.TemporaryDirectory(prefix="unlearnspec-rank-") as scratch:
                return run_job(job, self.ctx, Path(scratch))
        shared = job.kind == "baseline"  # a cache entry keyed by what it evaluates: concurrent runs may both make it
        with atomic_dir(job.out, keep_existing=shared, kind=job.kind, job=job.id, spec_hash=job.hash) as tmp:
            record = run_job(job, self.ctx, tmp)
            shutil.rmtree(tmp / "trainer", ignore_errors=True)  # HF's (empty) output folder
            shutil.rmtree(tmp / ".magic-states", ignore_errors=True)
            if isinstance(record, RunRecord):
                write_json(tmp / "provenance.json", provenance(project_root(job.spec_path)))
                write_json(tmp / POINT_FILE, record.model_dump(mode="json"))
        if isinstance(record, RunRecord):
            summary = ", ".join(f"{t} {m.acc:.4f}" for t, m in record.metrics.items())
            self.ctx.say(
                f"[{job.id}] {record.status}"
                + (f": {summary}" if summary else f" ({record.reason})" if record.reason else "")
            )
        return record
