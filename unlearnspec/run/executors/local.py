"""What the local executors (serial and pool) share, so both resume, skip, block and record alike: claim
and clean the output folders, decide per job whether it runs, record what it did, write results.json."""

from __future__ import annotations

import signal
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Iterator, Literal, Optional

from unlearnspec.run.assemble import assemble
from unlearnspec.run.context import RunContext
from unlearnspec.run.executors.base import JobStatus, Outcome
from unlearnspec.run.jobstate import job_state, read_record
from unlearnspec.run.plan import Job, Plan, SpecRun
from unlearnspec.run.progress import RunDisplay
from unlearnspec.run.rundirs import check_replaceable, claim_root, clean_stale_tmp, release_root

Decision = Literal["run", "ended"]


def claim_outputs(plan: Plan, ctx: RunContext, claimed: list[Path]) -> None:
    """Refuse before any work when an output in the way is not the tool's own or holds another spec. Folders this
    call creates are added to `claimed` (so a run that fails before writing anything can take them back)."""
    for run in plan.specs:
        if run.is_score:
            check_replaceable(run.out)
        elif ctx.is_main and claim_root(run.out, run.hash, run.spec.name):
            claimed.append(run.out)
    for job in plan.jobs:
        check_replaceable(job.out)


def clean_unfinished(plan: Plan, ctx: RunContext) -> None:
    """Remove the marked temp folders a killed run left (never one whose writer may still run)."""
    for folder in {j.out.parent for j in plan.jobs}:
        removed, kept = clean_stale_tmp(folder)
        for stale in removed:
            ctx.say(f"[resume] removed the unfinished {stale.name}")
        for live, why in kept:
            ctx.say(f"[resume] left {live} alone: {why}")


def spec_of(plan: Plan, job: Job) -> Optional[SpecRun]:
    """The spec whose results.json lists this job (points, score runs, LDS retrainings)."""
    return next((r for r in plan.specs if job.id in r.points or job.id in r.lds), None)


class LocalRun:
    """The bookkeeping of one local run of a plan: which jobs ended how, in the order they end."""

    def __init__(self, plan: Plan, ctx: RunContext, display: RunDisplay, retry_failed: bool) -> None:
        self.plan, self.ctx, self.display, self.retry_failed = plan, ctx, display, retry_failed
        self.outcome = Outcome()
        self.ended: set[str] = set()
        self.running: set[str] = set()
        self.claimed: list[Path] = []
        """Output folders this run created; those still empty when it fails are removed (`abandon`)."""

    def prepare(self, workers: int = 1) -> None:
        try:
            claim_outputs(self.plan, self.ctx, self.claimed)
            if self.ctx.is_main:
                clean_unfinished(self.plan, self.ctx)
        except BaseException:
            self.abandon()
            raise
        self.display.begin(self.plan, workers)

    def abandon(self) -> None:
        """A refusal or crash: the output folders this run created and never wrote into are removed again, so
        no empty marked folder is left behind (anything holding more than the marker is kept)."""
        for folder in self.claimed:
            release_root(folder)

    def ready(self, job: Job) -> bool:
        """Every job it waits for has ended (done, failed or not run)."""
        return all(a in self.ended for a in job.after)

    def decide(self, job: Job) -> Decision:
        """`run`, or `ended` when a job it needs failed (not run) or its folder is finished (skipped)."""
        blocked = next((self.outcome.failed[a] for a in job.after if a in self.outcome.failed), None)
        if blocked is not None:
            reason = blocked if blocked.startswith("not run: ") else f"not run: {blocked}"
            self.outcome.failed[job.id] = reason
            self.display.not_run(job, reason.removeprefix("not run: "))
            self.ended.add(job.id)
            return "ended"
        state = job_state(job)
        if state == "done" or (state == "failed" and not self.retry_failed):
            self.outcome.skipped.append(job.id)
            if state == "failed":
                record = read_record(job.out)
                self.outcome.failed[job.id] = f"{job.id} failed: {(record.reason if record else None) or 'failed'}"
            self.ctx.say(f"[resume] {job.id} already {state}; skipped")
            self.display.skipped(job)
            self.ended.add(job.id)
            self._assemble(job)
            return "ended"
        return "run"

    def started(self, job: Job) -> None:
        self.running.add(job.id)
        self.display.started(job)

    def finished(self, job: Job, status: str, reason: Optional[str], seconds: float) -> None:
        """Record a job that ran (ok or failed) and rewrite its spec's results.json."""
        self.running.discard(job.id)
        self.outcome.ran.append(job.id)
        self.outcome.seconds[job.id] = round(seconds, 3)
        if status != "ok":
            self.outcome.failed[job.id] = f"{job.id} failed: {reason}"
        self.ended.add(job.id)
        self.display.finished(job, status, seconds, reason)
        self._assemble(job)

    def _assemble(self, job: Job) -> None:
        run = spec_of(self.plan, job)
        if run is not None and self.ctx.is_main:
            self.outcome.results[run.path] = assemble(run, self.plan, self.ctx, self.outcome)

    def close(self) -> Outcome:
        """results.json of every spec (rank 0); complete unless interrupted."""
        if self.ctx.is_main and not self.outcome.interrupted:
            for run in self.plan.specs:
                self.outcome.results[run.path] = assemble(run, self.plan, self.ctx, self.outcome)
        self.outcome.complete = not self.outcome.interrupted
        return self.outcome

    def status(self) -> dict[str, JobStatus]:
        """Each job: running, not run, done / failed (its folder), or queued (waiting for its turn)."""
        rows: dict[str, JobStatus] = {}
        for job in self.plan.jobs:
            if job.id in self.running:
                rows[job.id] = JobStatus(job.id, job.kind, "running")
                continue
            reason = self.outcome.failed.get(job.id, "")
            if reason.startswith("not run: "):
                rows[job.id] = JobStatus(job.id, job.kind, "not run", reason.removeprefix("not run: "))
                continue
            state = job_state(job)
            if state == "failed":
                record = read_record(job.out)
                why = (record.reason if record is not None else None) or "recorded as failed"
                rows[job.id] = JobStatus(job.id, job.kind, "failed", why, recorded=True)
            elif state == "todo" and job.id not in self.ended:
                rows[job.id] = JobStatus(job.id, job.kind, "queued", "waiting for a worker or the jobs it needs")
            else:
                rows[job.id] = JobStatus(job.id, job.kind, state)
        return rows


def folder_status(plan: Plan) -> dict[str, JobStatus]:
    """Where each job stands from its folder alone (no run in progress): done, failed or todo."""
    run = LocalRun(plan, RunContext(say=lambda _m: None), RunDisplay(), retry_failed=False)
    run.ended = {j.id for j in plan.jobs}
    return run.status()


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (kill, a batch system) stops the run like Ctrl-C does, so the workers are stopped too."""

    def interrupt(_signum: int, _frame: Optional[FrameType]) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
