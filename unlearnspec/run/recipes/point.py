"""The point recipe: train one sweep point with its signed token weights, evaluate it, keep the model.

Reads top to bottom: spec -> token grid + weights -> model on the context's device -> trainer -> train ->
evaluate -> save -> record. It never knows which executor runs it.
"""

from __future__ import annotations

from pathlib import Path

from unlearnspec.run.context import RunContext
from unlearnspec.run.plan import Job
from unlearnspec.run.results import SAMPLES_FILE, RunRecord
from unlearnspec.run.rundirs import write_json
from unlearnspec.run.steps import Timer, batch_record, evaluate, gathered_model, prepare, save_model, train, write_spec


def run_point(job: Job, ctx: RunContext, workdir: Path) -> RunRecord:
    """Train one sweep point with its signed token weights, evaluate it, keep the model."""
    from unlearnspec.train.modeling import merged_for_eval
    from unlearnspec.train.trainer import TrainingDiverged

    spec = job.spec
    prep = prepare(job, ctx)
    record = RunRecord(
        point=job.point,
        hparams={"lr": job.lr},
        status="ok",
        run_dir=job.out.name,
        token_stats=prep.stats,
        spec_hash=job.hash,
        batch=batch_record(spec, prep, ctx),
    )
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
    assert trained is not None, "rank 0 holds the gathered model"
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
