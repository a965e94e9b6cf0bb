"""The local executor: runs the plan's jobs in order in this process (or in every rank of a torchrun
group), skipping finished ones, each into an atomic folder it owns, then writes results.json per spec.

It knows jobs, folders and records, not MAGIC: what a job does is the recipe's business.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

from unlearnspec.run.context import RunContext
from unlearnspec.run.plan import Job, Plan, SpecRun
from unlearnspec.run.results import (
    SAMPLES_FILE,
    BaselineRecord,
    Results,
    RunRecord,
    SpecInfo,
    save_results,
)
from unlearnspec.run.rundirs import (
    atomic_dir,
    check_replaceable,
    claim_root,
    clean_stale_tmp,
    provenance,
    write_json,
)
from unlearnspec.spec.load import load_spec, project_root

from unlearnspec.run.jobstate import POINT_FILE, job_state, read_record


@dataclass
class Outcome:
    """What one run of the plan did."""

    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    results: dict[Path, Results] = field(default_factory=dict)


@dataclass
class LocalExecutor:
    """Runs every job here, one after another, with resume: finished jobs are skipped."""

    ctx: RunContext
    retry_failed: bool = False

    def check(self, plan: Plan) -> None:
        """Refuse before any work when an output in the way is not the tool's own or holds another spec."""
        for run in plan.specs:
            if run.is_score:
                check_replaceable(run.out)
            elif self.ctx.is_main:
                claim_root(run.out, run.hash, run.spec.name)
        for job in plan.jobs:
            check_replaceable(job.out)

    def run(self, plan: Plan) -> Outcome:
        if self.ctx.world_size > 1:  # under torchrun: join the group once; every rank runs every job
            from unlearnspec.run import dist

            parallel = plan.specs[0].spec.parallel_or_default
            dist.init(parallel.backend, parallel.timeout_s)
        self.check(plan)
        outcome = Outcome()
        if self.ctx.is_main:
            for folder in {j.out.parent for j in plan.jobs}:
                removed, kept = clean_stale_tmp(folder)
                for stale in removed:
                    self.ctx.say(f"[resume] removed the unfinished {stale.name}")
                for live, why in kept:
                    self.ctx.say(f"[resume] left {live} alone: {why}")
        for job in plan.jobs:
            blocked = next((outcome.failed[a] for a in job.after if a in outcome.failed), None)
            if blocked is not None:
                outcome.failed[job.id] = f"not run: {blocked}"
                self.ctx.say(f"[{job.id}] not run: a job it needs failed")
                continue
            state = job_state(job)
            if state == "done" or (state == "failed" and not self.retry_failed):
                outcome.skipped.append(job.id)
                if state == "failed":
                    reason = (read_record(job.out) or RunRecord(point="", status="failed", run_dir="")).reason or "failed"
                    outcome.failed[job.id] = f"{job.id} failed: {reason}"
                self.ctx.say(f"[resume] {job.id} already {state}; skipped")
            else:
                record = self.run_job(job)
                outcome.ran.append(job.id)
                if self.ctx.world_size > 1:
                    from unlearnspec.run import dist

                    dist.barrier()  # rank 0 evaluated and wrote; the next job starts together
                if record.status != "ok":
                    outcome.failed[job.id] = f"{job.id} failed: {record.reason}"
            run = next((r for r in plan.specs if job.id in r.points or job.id in r.lds), None)
            if run is not None and self.ctx.is_main:
                outcome.results[run.path] = assemble(run, plan, self.ctx, outcome)
        if self.ctx.is_main:
            for run in plan.specs:
                outcome.results[run.path] = assemble(run, plan, self.ctx, outcome)
        return outcome

    def run_job(self, job: Job) -> Union[RunRecord, BaselineRecord]:
        from unlearnspec.run.recipe import run_job

        if not self.ctx.is_main:  # other ranks train in a private scratch folder; rank 0 writes the results
            import tempfile

            with tempfile.TemporaryDirectory(prefix="unlearnspec-rank-") as scratch:
                return run_job(job, self.ctx, Path(scratch))
        with atomic_dir(job.out, kind=job.kind, job=job.id, spec_hash=job.hash) as tmp:
            record = run_job(job, self.ctx, tmp)
            shutil.rmtree(tmp / "trainer", ignore_errors=True)  # HF's (empty) output folder
            shutil.rmtree(tmp / ".magic-states", ignore_errors=True)
            if isinstance(record, RunRecord):
                write_json(tmp / "provenance.json", provenance(project_root(job.spec_path)))
                write_json(tmp / POINT_FILE, record.model_dump(mode="json"))
        if isinstance(record, RunRecord):
            summary = ", ".join(f"{t} {m.acc:.4f}" for t, m in record.metrics.items())
            self.ctx.say(f"[{job.id}] {record.status}" + (f": {summary}" if summary else f" ({record.reason})" if record.reason else ""))
        return record


def _baseline(run: SpecRun, plan: Plan) -> Optional[BaselineRecord]:
    recorded = run.spec.baseline.recorded
    rec = BaselineRecord(status="skipped", reason="baseline.evaluate is false",
                         recorded=recorded.metrics if recorded else None,
                         recorded_source=recorded.source if recorded else None)
    if run.baseline is None:
        return None if run.is_score else rec
    cache = plan.job(run.baseline).out
    if not (cache / "eval.json").is_file():
        return rec.model_copy(update={"status": "failed", "reason": "the baseline job has not finished"})
    from unlearnspec.errors import UserError
    from unlearnspec.evaluation import EvalResult

    from unlearnspec.safeio import read_json

    fix = f"Delete the folder {cache} (the tool's own cache entry) and rerun to re-evaluate."
    try:
        result = EvalResult.from_json(read_json(cache / "eval.json", "cached baseline evaluation", "missing.", fix))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UserError.one(str(cache / "eval.json"), f"the cached baseline evaluation is unreadable ({type(exc).__name__}); "
                            f"delete the folder {cache} (the tool's own cache entry) and rerun to re-evaluate.") from None
    write_json(run.out / "baseline" / "eval.json", result.to_json())
    write_json(run.out / "baseline" / SAMPLES_FILE, result.samples)
    return rec.model_copy(update={"status": "ok", "reason": None, "metrics": result.metrics,
                                  "samples_file": f"baseline/{SAMPLES_FILE}"})


def assemble(run: SpecRun, plan: Plan, ctx: RunContext, outcome: Optional[Outcome] = None) -> Results:
    """results.json of one spec from its job folders (finished points only; the rest are pending)."""
    if run.lds:
        from unlearnspec.run.recipe import finish_score

        finish_score(run, plan, ctx)
    records = []
    for job_id in run.points:
        job = plan.job(job_id)
        record = read_record(job.out)
        if record is not None and record.spec_hash == job.hash:
            records.append(record.model_copy(update={"run_dir": "." if run.is_score else job.out.name}))
        elif outcome is not None and job_id in outcome.failed:
            records.append(RunRecord(point=job.point, hparams={"lr": job.lr}, status="failed",
                                     reason=outcome.failed[job_id], run_dir=job.out.name, spec_hash=job.hash))
    control = None
    if run.control is not None:
        known = next((s.spec for s in plan.specs if s.path.resolve() == run.control.resolve()), None)
        control = (known or load_spec(run.control, profile=plan.profile, check_refs=False)).name
    spec = run.spec
    info = SpecInfo(name=spec.name, hash=run.hash, path=str(run.path), profile=ctx.profile_name, control=control,
                    control_path=spec.control, role=spec.role, metric=spec.eval.metric if spec.eval else "acc",
                    tasks=[t.name for t in spec.eval.tasks] if spec.eval else [])
    if not run.out.is_dir():
        return Results(spec=info, runs=records)
    results = Results(spec=info, baseline=_baseline(run, plan), runs=records,
                      provenance=provenance(project_root(run.path)))
    save_results(results, run.out)
    return results
