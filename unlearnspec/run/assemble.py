"""results.json of one spec from its job folders: finished points, failures with their reasons, the
baseline (from the shared cache) and the LDS summary of a score spec. Every executor writes it this way."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from unlearnspec.run.context import RunContext
from unlearnspec.run.jobstate import read_record
from unlearnspec.run.plan import Plan, SpecRun
from unlearnspec.run.results import SAMPLES_FILE, BaselineRecord, Results, RunRecord, SpecInfo, save_results
from unlearnspec.run.rundirs import provenance, write_json
from unlearnspec.spec.load import load_spec, project_root

if TYPE_CHECKING:
    from unlearnspec.run.executors.base import Outcome


def _baseline(run: SpecRun, plan: Plan) -> Optional[BaselineRecord]:
    recorded = run.spec.baseline.recorded
    rec = BaselineRecord(
        status="skipped",
        reason="baseline.evaluate is false",
        recorded=recorded.metrics if recorded else None,
        recorded_source=recorded.source if recorded else None,
    )
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
        raise UserError.one(
            str(cache / "eval.json"),
            f"the cached baseline evaluation is unreadable ({type(exc).__name__}); "
            f"delete the folder {cache} (the tool's own cache entry) and rerun to re-evaluate.",
        ) from None
    write_json(run.out / "baseline" / "eval.json", result.to_json())
    write_json(run.out / "baseline" / SAMPLES_FILE, result.samples)
    return rec.model_copy(
        update={"status": "ok", "reason": None, "metrics": result.metrics, "samples_file": f"baseline/{SAMPLES_FILE}"}
    )


def assemble(run: SpecRun, plan: Plan, ctx: RunContext, outcome: Optional["Outcome"] = None) -> Results:
    """results.json of one spec from its job folders (finished points only; the rest are pending)."""
    if run.lds:
        from unlearnspec.run.recipes.lds import finish_score

        finish_score(run, plan, ctx)
    records = []
    for job_id in run.points:
        job = plan.job(job_id)
        record = read_record(job.out)
        if record is not None and record.spec_hash == job.hash:
            records.append(record.model_copy(update={"run_dir": "." if run.is_score else job.out.name}))
        elif outcome is not None and job_id in outcome.failed:
            records.append(
                RunRecord(
                    point=job.point,
                    hparams={"lr": job.lr},
                    status="failed",
                    reason=outcome.failed[job_id],
                    run_dir=job.out.name,
                    spec_hash=job.hash,
                )
            )
    control = None
    if run.control is not None:
        known = next((s.spec for s in plan.specs if s.path.resolve() == run.control.resolve()), None)
        control = (known or load_spec(run.control, profile=plan.profile, check_refs=False)).name
    spec = run.spec
    info = SpecInfo(
        name=spec.name,
        hash=run.hash,
        path=str(run.path),
        profile=ctx.profile_name,
        control=control,
        control_path=spec.control,
        role=spec.role,
        metric=spec.eval.metric if spec.eval else "acc",
        tasks=[t.name for t in spec.eval.tasks] if spec.eval else [],
        hazard_task=spec.eval.hazard_task if spec.eval else None,
        general_task=spec.eval.general_task if spec.eval else None,
    )
    if not run.out.is_dir():
        return Results(spec=info, runs=records)
    results = Results(
        spec=info, baseline=_baseline(run, plan), runs=records, provenance=provenance(project_root(run.path))
    )
    save_results(results, run.out)
    return results
