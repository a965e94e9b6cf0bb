"""The baseline recipe: evaluate the untouched base model once per distinct model and evaluation."""

from __future__ import annotations

from pathlib import Path

from unlearnspec.run.context import RunContext
from unlearnspec.run.plan import Job
from unlearnspec.run.results import SAMPLES_FILE, BaselineRecord
from unlearnspec.run.rundirs import write_json
from unlearnspec.run.steps import evaluate


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
