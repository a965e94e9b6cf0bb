"""The SLURM executor behind the protocol: `submit` hands every job that is neither done nor queued to
SLURM (run/slurm.py), `status` asks SLURM and the folders (run/slurmstate.py), `wait` returns at once
with what was submitted; a final SLURM job writes results.json and the reports."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Optional

from unlearnspec.errors import UserError
from unlearnspec.run.context import RunContext
from unlearnspec.run.executors.base import ExecutorOptions, JobStatus, Outcome
from unlearnspec.run.options import RunOptions
from unlearnspec.run.plan import Plan, plan_layouts
from unlearnspec.run.progress import RunDisplay

if TYPE_CHECKING:
    from unlearnspec.run.slurm import Request, Submitted


class SlurmBackend:
    """Submits the plan to SLURM through submitit, with the resources of the site file."""

    name: ClassVar[str] = "slurm"
    under_torchrun: ClassVar[bool] = False
    detached: ClassVar[bool] = True

    def __init__(self, options: RunOptions, cluster: Optional[Path], display: RunDisplay) -> None:
        from unlearnspec.spec.profile import slurm_settings

        self.options, self.cluster, self.display = options, cluster, display
        self.settings, self.source = slurm_settings(cluster, options.profile)
        self.request: Optional[Request] = None
        self.ctx: RunContext = RunContext(say=display.say)
        self._done: Optional[Submitted] = None
        self._plan: Optional[Plan] = None

    @classmethod
    def create(cls, options: RunOptions, settings: ExecutorOptions, display: RunDisplay) -> "SlurmBackend":
        for flag, value, where in (
            ("--jobs", settings.jobs > 1, "SLURM runs every ready job at once"),
            ("--gpus-per-job", settings.gpus_per_job is not None, "set slurm.jobs.<kind>.gpus"),
            ("--nproc", settings.nproc > 1, "set slurm.jobs.<kind>.processes"),
        ):
            if value:
                raise UserError.one(
                    flag,
                    f"is for local runs; with --executor slurm the site file decides ({where} "
                    "in the --cluster file or the profile's `slurm:` section).",
                )
        from unlearnspec.run.cluster_commands import require_slurm

        require_slurm()
        return cls(options, settings.cluster, display)

    @property
    def where(self) -> str:
        return f"on SLURM (resources: {self.source})"

    def make_plan(self, paths: list[Path]) -> Plan:
        from unlearnspec.run.cluster_commands import make_request
        from unlearnspec.run.slurm import context_for, plan_for

        self.request = make_request(paths, self.options, self.cluster)
        self.ctx = context_for(self.request, self.request.plan_device, say=self.display.say)
        plan = plan_for(self.request, self.ctx)
        # every training job's global batch must split over its kind's `processes`: refused before anything is submitted
        plan_layouts(
            plan,
            lambda job: self.settings.resources(job.kind).processes,
            lambda job: f"jobs.{job.kind}.processes in {self.source}",
        )
        return plan

    def submit(self, plan: Plan) -> None:
        from unlearnspec.run.slurm import SlurmExecutor
        from unlearnspec.run.slurmstate import SlurmUnavailable

        if self.request is None:
            raise RuntimeError("submit() before make_plan()")
        self._plan = plan
        try:
            self._done = SlurmExecutor(self.ctx, self.request, self.settings, self.options.reporter).submit(plan)
        except SlurmUnavailable as exc:
            raise UserError.one("--executor", f"SLURM does not answer ({exc}).") from None

    def status(self, plan: Plan) -> dict[str, JobStatus]:
        from unlearnspec.run.slurm import statuses

        return statuses(plan)

    def wait(self) -> Outcome:
        """What was submitted, kept and not run; where to follow it. Returns at once."""
        done, plan = self._done, self._plan
        if done is None or plan is None:
            raise RuntimeError("wait() before submit()")
        say = self.display.say
        kept = ", ".join(f"{sum(1 for s in done.kept.values() if s == k)} {k}" for k in sorted(set(done.kept.values())))
        say(
            f"[slurm] {len(plan.jobs)} job(s) in the plan (resources: {self.source}): {len(done.submitted)} submitted"
            + (f", kept {kept}" if kept else "")
            + (f", {len(done.not_run)} not run" if done.not_run else "")
            + f" in {done.seconds:.2f} s"
        )
        if done.assemble:
            say(f"[slurm] results.json and reports: job {done.assemble}, after the others end")
        folders = " ".join(str(r.out) for r in plan.specs if not r.is_score) or " ".join(str(r.out) for r in plan.specs)
        say(f"[slurm] follow with: unlearnspec status {folders}")
        outcome = Outcome(submitted=dict(done.submitted))
        outcome.skipped = [j for j, s in done.kept.items() if s in ("done", "failed")]
        for job_id, state in done.kept.items():
            if state == "failed":
                outcome.failed[job_id] = f"{job_id} is recorded as failed"
                say(f"[slurm] {job_id} is recorded as failed; --retry-failed submits it again")
        outcome.failed.update({j: f"not run: {why}" for j, why in done.not_run.items()})
        return outcome
