"""The SLURM executor: submits the plan's jobs through submitit with their resources and dependencies,
then gets out of the way. Each job rebuilds the plan from the submitted request and runs its one job
with the local executor's code (same atomic folder, same record); a final job assembles results.json
and the reports once the others ended. Rerunning submits only what is neither done nor queued/running.

Dependencies: a point waits (`afterok`) for the score jobs it reads; jobs are submitted with
`--kill-on-invalid-dep=yes`, so a failed producer's dependants are cancelled, and they are reported as
not run with the producer's reason. Time limits and preemption: submitit signals the job before the
limit; the job is requeued (restarting its point, whose folder is only written at the end).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from unlearnspec import worlds
from unlearnspec.run.context import RunContext, Say
from unlearnspec.run.options import Reporter, RunOptions
from unlearnspec.run.plan import Job, Plan
from unlearnspec.run.sbatch import SbatchJob, _executor, sbatch_script  # noqa: F401 - sbatch_script: for callers and tests
from unlearnspec.run.slurmstate import (
    REQUEST,
    RUN,
    SLURM_DIR,
    SUBMISSION,
    JobStatus,
    job_dir,
    job_status,
    live_jobs,
    my_env,
    read_json,
    slurm_id_of,
    write_state,
)
from unlearnspec.spec.cluster import JobKindName, SlurmSection

if TYPE_CHECKING:
    from submitit.helpers import DelayedSubmission

    from unlearnspec.run.results import Results

ASSEMBLE = "_assemble"


@dataclass(frozen=True)
class Request:
    """What `run --executor slurm` was asked, in plain JSON: each job rebuilds the same plan from it."""

    paths: list[str]
    profile: Optional[str] = None
    overrides: list[str] = field(default_factory=list)
    out: Optional[str] = None
    plan_device: str = "cpu"
    """Device kind the plan was built for (baseline cache keys name it): cuda when baseline jobs get GPUs."""
    cluster: Optional[str] = None
    retry_failed: bool = False
    report: bool = True
    reports_dir: Optional[str] = None
    worlds: list[str] = field(default_factory=lambda: list(worlds.plugins()))
    """The world plug-ins the submitting process had registered (`unlearnspec.toy`); each job imports them again."""

    @classmethod
    def read(cls, path: Path) -> "Request":
        """The request a submission wrote, its fields type-checked (a damaged or edited file is a UserError)."""
        from pydantic import TypeAdapter, ValidationError

        from unlearnspec.errors import UserError

        fix = "Rerun `unlearnspec run ... --executor slurm` to rewrite it."
        data = read_json(path)
        if data is None:
            raise UserError.one(str(path), f"unreadable submission request. {fix}")
        try:
            request = TypeAdapter(cls).validate_python({k: v for k, v in data.items() if k in cls.__dataclass_fields__})
            if not request.paths or request.plan_device not in ("cpu", "cuda"):
                raise UserError.one(
                    str(path), f"not a submission request (no spec paths, or an unknown plan device). {fix}"
                )
            return request
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = ".".join(str(p) for p in first["loc"]) or "top level"
            raise UserError.one(
                str(path), f"not a submission request ({loc}: {first['msg']}). {fix}", loc=loc
            ) from None

    def options(self, device: Optional[str] = None) -> RunOptions:
        path = lambda p: Path(p) if p else None  # noqa: E731
        return RunOptions(
            profile=path(self.profile),
            overrides=list(self.overrides),
            out=path(self.out),
            retry_failed=self.retry_failed,
            device=device,
            report=self.report,
            reports_dir=path(self.reports_dir),
        )


def context_for(request: Request, device: str, say: Say = print) -> RunContext:
    """A run context on `device` without probing it (the submitting node may have no GPU)."""
    from unlearnspec.run.context import toy_context

    worlds.load_plugins(request.worlds, where="request.json worlds")  # a job process has not imported the CLI
    if request.profile is not None:
        return toy_context(Path(request.profile), device=device, say=say)
    return RunContext(device=device, say=say)


def plan_for(request: Request, ctx: RunContext) -> Plan:
    """The plan exactly as submitted (same paths, profile, overrides, output and plan device)."""
    from unlearnspec.run.plan import PlanOptions, build_plan

    return build_plan(
        [Path(p) for p in request.paths],
        PlanOptions(
            profile=Path(request.profile) if request.profile else None,
            overrides=tuple(request.overrides),
            out=Path(request.out) if request.out else None,
            auto_produce=ctx.toy,
            device=request.plan_device,
        ),
        ctx.assets,
    )


# --------------------------------------------------------------------------- inside a job
class JobFailed(RuntimeError):
    """The job ran and recorded a failure (a diverged point, a failed score check): SLURM state FAILED."""


def run_one(request: Request, job_id: str, job_hash: str, device: str) -> tuple[str, Optional[str]]:
    """Run one job of the submitted plan with the local executor's code; every torchrun rank calls this."""
    from unlearnspec.errors import UserError
    from unlearnspec.run.executors.serial import SerialExecutor
    from unlearnspec.run.options import quiet_libraries
    from unlearnspec.run.rundirs import TMP_PREFIX, marker

    quiet_libraries()
    ctx = context_for(request, device)
    if ctx.device != "cpu":
        from unlearnspec.run.context import resolve_device

        ctx.device = resolve_device(device)  # now on the job's node: a missing GPU is an error here
    plan = plan_for(request, ctx)
    job = next((j for j in plan.jobs if j.id == job_id), None)
    if job is None or job.hash != job_hash:
        raise UserError.one(
            job_id,
            "the spec changed after this job was submitted; rerun `unlearnspec run ... "
            "--executor slurm` to submit the current plan.",
        )
    if ctx.is_main:  # an earlier attempt of this job (requeued, killed) may have left its temp folder
        import shutil

        for stale in job.out.parent.glob(f"{TMP_PREFIX}{job.out.name}-*"):
            if stale.is_dir() and not stale.is_symlink() and marker(stale) is not None:
                shutil.rmtree(stale, ignore_errors=True)
    record = SerialExecutor(ctx).run_job(job)
    if ctx.is_main and job.out.is_dir():
        sub = read_json(job_dir(job) / SUBMISSION) or {}
        write_state(
            job.out / "slurm.json",
            {
                "slurm_id": my_env().get("SLURM_JOB_ID", sub.get("slurm_id")),
                "log_out": sub.get("log_out"),
                "log_err": sub.get("log_err"),
                "processes": ctx.world_size,
            },
        )
    return record.status, getattr(record, "reason", None)


def _torchrun(
    request: Request, state: Path, job_id: str, job_hash: str, device: str, processes: int
) -> tuple[str, Optional[str]]:
    """Start `processes` ranks of this job with torchrun on this node, then read what rank 0 recorded."""
    req = state / REQUEST
    write_state(req, asdict(request))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nnodes=1",
        f"--nproc-per-node={processes}",
        "-m",
        "unlearnspec.run.slurm",
        str(req),
        job_id,
        job_hash,
        device,
    ]
    rc = subprocess.run(cmd).returncode
    if rc != 0:
        raise RuntimeError(f"torchrun with {processes} processes exited with status {rc}; see the job's log")
    done = read_json(state / "rank0.json") or {}
    reason = done.get("reason")
    return str(done.get("status", "failed")), reason if isinstance(reason, str) else None


@dataclass
class SlurmTask:
    """The callable submitit pickles for one job. Checkpointable: at a time limit or preemption submitit
    requeues it, and it restarts its job (a point's folder appears only when it has finished)."""

    request: Request
    job_id: str
    job_hash: str
    state_dir: str
    device: str = "cpu"
    processes: int = 1

    def checkpoint(self, *args: object, **kwargs: object) -> DelayedSubmission:
        import submitit

        write_state(Path(self.state_dir) / RUN, {"state": "requeued", "at": time.time(), **my_env()})
        return submitit.helpers.DelayedSubmission(self)

    def __call__(self) -> str:
        state = Path(self.state_dir)
        write_state(state / RUN, {"state": "running", "started": time.time(), "host": socket.gethostname(), **my_env()})
        try:
            if self.processes > 1:
                status, reason = _torchrun(self.request, state, self.job_id, self.job_hash, self.device, self.processes)
            else:
                status, reason = run_one(self.request, self.job_id, self.job_hash, self.device)
        except SystemExit:  # submitit requeues the job (time limit, preemption) by exiting
            raise
        except BaseException as exc:
            text = str(exc).strip().splitlines()
            write_state(
                state / RUN,
                {
                    "state": "error",
                    "reason": f"{type(exc).__name__}: {text[0] if text else ''}"[:500],
                    "ended": time.time(),
                    **my_env(),
                },
            )
            raise
        write_state(
            state / RUN, {"state": "finished", "status": status, "reason": reason, "ended": time.time(), **my_env()}
        )
        if status != "ok":
            raise JobFailed(reason or "failed")
        return status


@dataclass
class AssembleTask:
    """The last job: results.json of every spec from the job folders, then the reports."""

    request: Request
    reporter: Optional[Reporter] = None
    """Pickled with the task by reference (a module-level function of the report layer)."""

    def __call__(self) -> str:
        assemble_all(self.request, reporter=self.reporter)
        return "ok"


def statuses(plan: Plan) -> dict[str, JobStatus]:
    """Every job's status, producers first, so a dependant of a failed producer shows why it did not run."""
    subs = {j.id: read_json(job_dir(j) / SUBMISSION) or {} for j in plan.jobs}
    live = live_jobs([slurm_id_of(s) for s in subs.values()])
    out: dict[str, JobStatus] = {}
    for job in plan.jobs:
        blocked = next(
            (_blocking(out[a]) for a in job.after if a in out and out[a].state in ("failed", "not run")), None
        )
        out[job.id] = job_status(job, live, blocked)
    return out


def _blocking(producer: JobStatus) -> str:
    if producer.state == "not run":
        return producer.detail
    return f"{producer.job} failed: {producer.detail}"


def assemble_all(request: Request, say: Say = print, reporter: Optional[Reporter] = None) -> dict[Path, Results]:
    from rich.console import Console

    from unlearnspec.run.assemble import assemble
    from unlearnspec.run.executors.base import Outcome
    from unlearnspec.run.options import reports_dir_for

    ctx = context_for(request, "cpu", say=say)
    plan = plan_for(request, ctx)
    outcome = Outcome()
    for job_id, st in statuses(plan).items():
        if st.state not in ("done", "queued", "running"):
            outcome.failed[job_id] = st.detail if st.state == "not run" else f"{job_id} {st.state}: {st.detail}"
    results = {run.path: assemble(run, plan, ctx, outcome) for run in plan.specs}
    experiments = [r for r in plan.specs if not r.is_score]
    if request.report and reporter is not None and experiments:
        reporter(
            [r.out for r in experiments],
            reports_dir_for(plan, request.options()),
            request.profile is not None,
            Console(width=200),
        )
    return results


# --------------------------------------------------------------------------- submitting
def _job_name(job: Job) -> str:
    import re

    return "us-" + re.sub(r"[^A-Za-z0-9_.=-]", "-", job.id.replace(":", "-"))[:120]


@dataclass
class Submitted:
    """What one `run --executor slurm` did."""

    submitted: dict[str, str] = field(default_factory=dict)
    """Job id -> SLURM job id, submitted now."""
    kept: dict[str, str] = field(default_factory=dict)
    """Job id -> state, not submitted (done, queued, running, recorded failure)."""
    not_run: dict[str, str] = field(default_factory=dict)
    """Job id -> reason (a producer failed)."""
    assemble: Optional[str] = None
    seconds: float = 0.0


@dataclass
class SlurmExecutor:
    """Submits what is neither done nor queued/running; the jobs do the work."""

    ctx: RunContext
    request: Request
    settings: SlurmSection
    reporter: Optional[Reporter] = None

    def submit(self, plan: Plan) -> Submitted:
        from unlearnspec.run.executors.local import claim_outputs

        start = time.perf_counter()
        claim_outputs(plan, self.ctx, [])  # claims the output folders; refuses foreign ones before submitting
        for run in plan.specs:  # `status RUN_DIR` rebuilds the plan from it (a score job's folder is its own)
            if not run.is_score:
                write_state(run.out / SLURM_DIR / REQUEST, asdict(self.request))
        done = Submitted()
        slurm_of: dict[str, str] = {}  # job id -> SLURM id of what is queued/running now
        failed: dict[str, str] = {}  # job id -> why its dependants cannot run
        current = statuses(plan)
        for job in plan.jobs:
            st = current[job.id]
            blocked = next((failed[a] for a in job.after if a in failed), None)
            if st.state == "done" or st.live or (st.recorded and not self.request.retry_failed):
                done.kept[job.id] = st.state
                if st.live:
                    slurm_of[job.id] = st.slurm_id
                elif st.state == "failed":
                    failed[job.id] = f"{job.id} failed: {st.detail}"
            elif blocked is not None:
                failed[job.id] = done.not_run[job.id] = blocked
                write_state(
                    job_dir(job) / SUBMISSION, {"job": job.id, "reason": f"not run: {blocked}", "at": time.time()}
                )
                self.ctx.say(f"[slurm] {job.id} not submitted: {blocked}")
            else:
                slurm_of[job.id] = done.submitted[job.id] = self._submit(
                    job, [slurm_of[a] for a in job.after if a in slurm_of]
                )
                self.ctx.say(f"[slurm] {job.id} -> job {slurm_of[job.id]}")
        done.assemble = self._assemble(plan, slurm_of, bool(done.submitted))
        done.seconds = round(time.perf_counter() - start, 3)
        return done

    def _submit(self, job: Job, after: list[str]) -> str:
        kind: JobKindName = job.kind
        res = self.settings.resources(kind)
        device = "cuda" if res.gpus else "cpu"
        folder = job_dir(job)
        task = SlurmTask(self.request, job.id, job.hash, str(folder), device, res.processes)
        ex = _executor(folder, self.settings, SbatchJob(kind, _job_name(job), tuple(after), "afterok"))
        sjob = ex.submit(task)
        write_state(folder / RUN, {"state": "submitted", "at": time.time()})
        write_state(
            folder / SUBMISSION,
            {
                "job": job.id,
                "slurm_id": sjob.job_id,
                "name": _job_name(job),
                "after": after,
                "log_out": str(sjob.paths.stdout),
                "log_err": str(sjob.paths.stderr),
                "resources": res.model_dump(),
                "at": time.time(),
            },
        )
        return str(sjob.job_id)

    def _assemble(self, plan: Plan, slurm_of: dict[str, str], submitted_any: bool) -> Optional[str]:
        """results.json and reports: now when nothing is pending, else a last job after all the others."""
        last = plan.specs[-1]
        folder = (
            (last.out.parent / SLURM_DIR / f"{ASSEMBLE}-{last.out.name}")
            if last.is_score
            else last.out / SLURM_DIR / ASSEMBLE
        )
        if not slurm_of:
            assemble_all(self.request, say=self.ctx.say, reporter=self.reporter)
            return None
        previous = slurm_id_of(read_json(folder / SUBMISSION) or {})
        if not submitted_any and previous and live_jobs([previous]):
            return previous
        after = tuple(sorted(set(slurm_of.values()), key=lambda i: (len(i), i)))
        ex = _executor(folder, self.settings, SbatchJob("assemble", "us-assemble", after, "afterany"))
        sjob = ex.submit(AssembleTask(self.request, self.reporter))
        write_state(
            folder / SUBMISSION,
            {
                "job": "assemble",
                "slurm_id": sjob.job_id,
                "name": "us-assemble",
                "log_out": str(sjob.paths.stdout),
                "at": time.time(),
            },
        )
        return str(sjob.job_id)


def _worker_main(argv: list[str]) -> int:
    """torchrun entry of a multi-process job: every rank runs the job and says what it recorded (rank 0's
    record is the job's)."""
    from unlearnspec.run.context import rank, world_size

    req_path, job_id, job_hash, device = argv
    request = Request.read(Path(req_path))
    status, reason = run_one(request, job_id, job_hash, device)
    write_state(
        Path(req_path).parent / f"rank{rank()}.json", {"status": status, "reason": reason, "world_size": world_size()}
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(_worker_main(sys.argv[1:]))
