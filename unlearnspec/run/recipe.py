"""The recipe: run one job of the plan into a work folder and return its typed record.

A point job reads top to bottom: spec -> token grid + weights -> model on the context's device ->
trainer -> train -> evaluate -> save -> record. Score jobs run `unlearnspec.magic.job.run_score`;
baseline jobs evaluate the untouched model. The recipe never knows which executor runs it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Union

from unlearnspec.run.context import RunContext
from unlearnspec.run.plan import Job
from unlearnspec.run.results import SAMPLES_FILE, BaselineRecord, RunRecord
from unlearnspec.run.rundirs import write_json
from unlearnspec.run.steps import Timer, batch_record, evaluate, gathered_model, prepare, save_model, train, write_spec

JobRecord = Union[RunRecord, BaselineRecord]


def run_job(job: Job, ctx: RunContext, workdir: Path) -> JobRecord:
    if job.kind == "baseline":
        return run_baseline(job, ctx, workdir)
    if job.kind == "score":
        from unlearnspec.magic.job import run_score

        return run_score(job, ctx, workdir)
    if job.kind == "lds":
        from unlearnspec.magic.lds_job import run_lds

        return run_lds(job, ctx, workdir)
    return run_point(job, ctx, workdir)


def finish_score(run: Any, plan: Any, ctx: RunContext) -> None:
    """After a score spec's LDS retrainings: their summary into scores.json (once all have finished)."""
    from unlearnspec.magic.lds_job import write_lds_summary

    summary = write_lds_summary(run.out, [plan.job(j) for j in run.lds])
    def num(x: Any) -> str:
        return "n/a" if x is None else f"{x:.3f}"

    if summary is not None and summary.get("new"):
        lo, hi = summary["spearman_ci95"]
        ctx.say(f"[{run.spec.name}] LDS {num(summary['spearman'])} (Spearman; 95% CI {num(lo)}-{num(hi)}) over {summary['subsets']} subsets of {summary['fraction']:.0%} "
                f"{summary['unit']}s")


def run_point(job: Job, ctx: RunContext, workdir: Path) -> RunRecord:
    """Train one sweep point with its signed token weights, evaluate it, keep the model."""
    from unlearnspec.train.modeling import merged_for_eval
    from unlearnspec.train.trainer import TrainingDiverged

    spec = job.spec
    prep = prepare(job, ctx)
    record = RunRecord(point=job.point, hparams={"lr": job.lr}, status="ok", run_dir=job.out.name,
                       token_stats=prep.stats, spec_hash=job.hash, batch=batch_record(spec, prep, ctx))
    write_spec(job, workdir)
    write_json(workdir / "token_stats.json", prep.stats.model_dump())
    with Timer() as clock:
        try:
            trainer = train(spec, prep, workdir, ctx)
        except TrainingDiverged as exc:
            trainer = None
            reason = str(exc)
    record.train_seconds = clock.seconds
    if trainer is None:
        record.status, record.reason = "failed", reason
        return record
    write_json(workdir / "log_history.json", trainer.state.log_history)
    if trainer.objective is not None and ctx.is_main:
        from unlearnspec.run.objectives import OBJECTIVE_FILE, objective_record

        write_json(workdir / OBJECTIVE_FILE, objective_record(trainer.objective, prep))
    if spec.training.report_to not in (None, "none"):
        record.curves = f"{spec.training.report_to}: {trainer.curves_dir.relative_to(workdir)}"
    trained = gathered_model(trainer, spec, ctx)  # a plain model on rank 0, also after FSDP sharded it
    if not ctx.is_main:
        return record  # evaluation and files belong to rank 0
    if spec.output.save_model == "adapter":
        record.model_dir = save_model(spec, trained, prep.tokenizer, workdir)
    model = merged_for_eval(trained, spec.lora)
    with Timer() as clock:
        result = evaluate(spec, job.spec_path, model, prep.tokenizer, ctx)
    record.eval_seconds = clock.seconds
    write_json(workdir / "eval.json", result.to_json())
    write_json(workdir / SAMPLES_FILE, result.samples)
    if spec.output.save_model == "final":
        record.model_dir = save_model(spec, model, prep.tokenizer, workdir)
    record.metrics = dict(result.metrics)
    record.samples_file = f"{job.out.name}/{SAMPLES_FILE}"
    from unlearnspec.run.attack import run_attack

    record.attack = run_attack(job, model, prep, ctx, workdir)  # the relearning attack, when the spec has one
    return record


def run_baseline(job: Job, ctx: RunContext, workdir: Path) -> BaselineRecord:
    """Evaluate the untouched base model once per distinct model and evaluation (cached by `job.hash`)."""
    from unlearnspec.train.modeling import load_model, load_tokenizer

    spec = job.spec
    ctx.say(f"[baseline] evaluating the base model of {spec.name} ({job.hash})")
    model = load_model(spec.model, ctx.assets, device=ctx.device_for(spec))
    result = evaluate(spec, job.spec_path, model, load_tokenizer(spec.model, ctx.assets), ctx)
    write_json(workdir / "eval.json", result.to_json())
    write_json(workdir / SAMPLES_FILE, result.samples)
    return BaselineRecord(status="ok", metrics=result.metrics, samples_file=SAMPLES_FILE)
