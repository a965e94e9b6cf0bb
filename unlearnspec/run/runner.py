"""Run a spec: dependencies, baseline, one atomic run dir per sweep point, resume, results.json.

Reads like a recipe: spec -> model -> data -> weights -> trainer -> train -> evaluate -> write.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from unlearnspec.errors import UserError
from unlearnspec.run.results import (
    SAMPLES_FILE,
    BaselineRecord,
    Results,
    RunRecord,
    SpecInfo,
    TaskMetrics,
    TokenStats,
    save_results,
)
from unlearnspec.run.rundirs import (
    POINT_FILE,
    atomic_dir,
    check_same_spec,
    clean_stale_tmp,
    point_dir_name,
    provenance,
    read_point,
    spec_hash,
    write_json,
)
from unlearnspec.spec import Spec
from unlearnspec.spec.load import dump_spec, load_spec, project_root, resolve_path

Say = Callable[[str], None]


@dataclass
class RunOptions:
    """How to run (none of this changes an experiment: that lives in specs and profiles)."""

    profile: Optional[Path] = None
    overrides: list[str] = field(default_factory=list)
    out: Optional[Path] = None
    retry_failed: bool = False
    auto_produce: bool = False  # run missing score producers first (on with --toy)
    say: Say = print
    progress: Any = None  # a rich Progress, or None


@dataclass
class Prepared:
    """Everything shared by the sweep points of one spec."""

    tokenizer: Any
    grid: Any
    weights: Any
    stats: TokenStats
    dataset: Any


def output_dir(spec: Spec, spec_path: Path, options: RunOptions) -> Path:
    return options.out if options.out is not None else resolve_path(spec_path, spec.output.dir)


def toy_world(options: RunOptions) -> Any:
    """The toy world of the profile (built on first use), or None for real runs."""
    from unlearnspec.spec.profile import load_profile

    if options.profile is None:
        return None
    profile = load_profile(options.profile)
    if profile.threads is not None:
        import torch

        torch.set_num_threads(profile.threads)
    from unlearnspec.toy.build import ensure_toy_world

    world = (options.profile.parent / profile.world) if profile.world else None
    return ensure_toy_world(world, log=options.say)


# --------------------------------------------------------------------------- scores
def score_file(spec_path: Path, name: str, spec: Spec, options: RunOptions) -> Path:
    """Where a score source's file lives; runs its producer first when allowed."""
    from unlearnspec.scores import SCORES_FILE

    src = spec.scores[name]
    if src.path is not None:
        return resolve_path(spec_path, src.path)
    assert src.produced_by is not None
    producer_path = resolve_path(spec_path, src.produced_by)
    producer = load_spec(producer_path, profile=options.profile)
    target = resolve_path(producer_path, producer.output.dir) / SCORES_FILE
    if target.is_file():
        return target
    if not options.auto_produce:
        flag = f" --profile {options.profile}" if options.profile else ""
        raise UserError.one(
            str(spec_path),
            f"score source {name!r} needs {src.produced_by}, which has not been run (no {target}). "
            f"Run `unlearnspec run {src.produced_by}{flag}` first.",
            loc=f"scores.{name}.produced_by",
        )
    options.say(f"[scores] {name}: running the producer {src.produced_by} first")
    run_spec(producer_path, RunOptions(**{**options.__dict__, "out": None, "overrides": []}))
    return target


def prepare(spec: Spec, spec_path: Path, options: RunOptions, world: Any) -> Prepared:
    import torch

    from unlearnspec.data import build_grid, load_texts
    from unlearnspec.train.modeling import load_tokenizer, tokenizer_id
    from unlearnspec.scores import checked_scores, load_score_file, token_stats, token_weights
    from unlearnspec.train.trainer import grid_dataset

    tokenizer = load_tokenizer(spec.model, toy=world)
    tok_id = tokenizer_id(spec.model, toy=world)
    texts, rows = load_texts(spec.data, spec_path, tokenizer, toy=world)
    grid = build_grid(texts, tokenizer, spec.data.max_seq_len, tok_id, spec.data.append_eos, rows)
    scores: dict[str, torch.Tensor] = {}
    for name, src in spec.scores.items():
        sf = load_score_file(score_file(spec_path, name, spec, options))

        def fingerprint_at(width: int) -> str:
            return build_grid(texts, tokenizer, width, tok_id, spec.data.append_eos).fingerprint

        scores[name] = checked_scores(sf, src, name, grid.labels, grid.fingerprint, fingerprint_at)
    weights = token_weights(spec.tokens, scores, grid.labels)
    stats = token_stats(weights, grid.labels, spec.loss.normalizer)
    return Prepared(tokenizer, grid, weights, stats, grid_dataset(grid, weights))


# --------------------------------------------------------------------------- one point
def _progress_callback(progress: Any, task: Any) -> Any:
    """A TrainerCallback that advances a rich progress task each optimizer step."""
    from transformers import TrainerCallback

    class ProgressCallback(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            progress.update(task, completed=state.global_step)

    return ProgressCallback()


def train_point(spec: Spec, prep: Prepared, lr: float, workdir: Path, options: RunOptions, world: Any,
                extra_callbacks: list[Any] = (), setup: Optional[Callable[[Any], None]] = None,
                exact_replay: bool = False) -> Any:
    """Train one sweep point. `exact_replay` (MAGIC runs) trains with the replay attention kernel and
    the full-logits loss, so the recorded run is exactly what the reverse pass differentiates."""
    import torch

    from unlearnspec.train.modeling import apply_lora, load_model
    from unlearnspec.train.trainer import WeightedSFTTrainer, build_optimizer, build_scheduler, sft_config, total_steps

    torch.manual_seed(spec.training.seed)
    model = load_model(spec.model, dropout=spec.training.dropout, toy=world)
    if exact_replay:
        from unlearnspec.magic.attention import use_replay_attention

        use_replay_attention(model)
    if spec.lora is not None:
        model = apply_lora(model, spec.lora)
    n = prep.grid.input_ids.shape[0]
    steps = total_steps(spec.training, n)
    optimizer = build_optimizer(spec.training, [p for p in model.parameters() if p.requires_grad], lr)
    scheduler = build_scheduler(spec.training, optimizer, steps)
    callbacks: list[Any] = list(extra_callbacks)
    task = None
    if options.progress is not None:
        task = options.progress.add_task(f"train lr={lr:g}", total=steps)
        callbacks.append(_progress_callback(options.progress, task))
    trainer = WeightedSFTTrainer(
        model=model,
        args=sft_config(spec.training, lr, workdir / "trainer", n),
        train_dataset=prep.dataset,
        processing_class=prep.tokenizer,
        optimizers=(optimizer, scheduler),
        callbacks=callbacks,
        normalizer=spec.loss.normalizer,
        fused_head=not exact_replay,
    )
    if setup is not None:
        setup(trainer)
    try:
        trainer.train()
    finally:
        if task is not None:
            options.progress.remove_task(task)
    return trainer


def evaluate(spec: Spec, model: Any, tokenizer: Any, spec_path: Path, world: Any, progress: Any = None) -> Any:
    """lm-eval on the in-memory model, with an (indeterminate) progress line while it runs."""
    assert spec.eval is not None
    task = progress.add_task(f"evaluate {', '.join(t.name for t in spec.eval.tasks)}", total=None) if progress else None
    try:
        return _evaluate(spec, model, tokenizer, spec_path, world)
    finally:
        if task is not None:
            progress.remove_task(task)


def _evaluate(spec: Spec, model: Any, tokenizer: Any, spec_path: Path, world: Any) -> Any:
    from unlearnspec.evaluation import evaluate_model

    assert spec.eval is not None
    plugins = (project_root(spec_path) / "plugins").resolve()
    include = [plugins]
    if world is not None and plugins not in Path(world.task_dir).resolve().parents:
        include.append(world.task_dir)  # a non-default world keeps its task files in the cache
    return evaluate_model(model, tokenizer, spec.eval, include)


def run_point(spec: Spec, resolved: dict[str, Any], spec_path: Path, prep: Prepared, lr: float, final: Path,
              options: RunOptions, world: Any, digest: str) -> dict[str, Any]:
    from unlearnspec.train.modeling import merged_for_eval
    from unlearnspec.train.trainer import TrainingDiverged

    point = f"lr={lr:g}"
    record: dict[str, Any] = {"point": point, "hparams": {"lr": lr}, "spec_hash": digest,
                              "token_stats": prep.stats.model_dump()}
    with atomic_dir(final) as tmp:
        point_spec = json.loads(json.dumps(resolved))
        point_spec["training"]["lr"] = lr
        (tmp / "spec.yaml").write_text(dump_spec(Spec.model_validate(point_spec)))
        write_json(tmp / "token_stats.json", prep.stats.model_dump())
        start = time.perf_counter()
        try:
            trainer = train_point(spec, prep, lr, tmp, options, world)
        except TrainingDiverged as exc:
            record.update(status="failed", reason=str(exc), train_seconds=time.perf_counter() - start)
        else:
            record["train_seconds"] = time.perf_counter() - start
            write_json(tmp / "log_history.json", trainer.state.log_history)
            start = time.perf_counter()
            result = evaluate(spec, merged_for_eval(trainer.model, spec.lora), prep.tokenizer, spec_path, world, options.progress)
            record["eval_seconds"] = time.perf_counter() - start
            write_json(tmp / "eval.json", result.to_json())
            write_json(tmp / SAMPLES_FILE, result.samples)
            record.update(status="ok", metrics={k: v.model_dump() for k, v in result.metrics.items()})
        shutil.rmtree(tmp / "trainer", ignore_errors=True)  # HF's empty output folder
        write_json(tmp / "provenance.json", provenance(project_root(spec_path)))
        write_json(tmp / POINT_FILE, record)
    return record


# --------------------------------------------------------------------------- baseline
def baseline(spec: Spec, spec_path: Path, out: Path, prep: Prepared, world: Any, options: RunOptions) -> BaselineRecord:
    import hashlib

    from unlearnspec.evaluation import EvalResult
    from unlearnspec.train.modeling import load_model, model_id
    from unlearnspec.toy.build import cache_root

    recorded = spec.baseline.recorded
    rec = BaselineRecord(status="skipped", reason="baseline.evaluate is false",
                         recorded=recorded.metrics if recorded else None, recorded_source=recorded.source if recorded else None)
    if not spec.baseline.evaluate or spec.eval is None:
        return rec
    key = hashlib.sha256(json.dumps({"model": model_id(spec.model, toy=world), "dtype": spec.model.dtype,
                                     "eval": spec.eval.model_dump(mode="json")}, sort_keys=True).encode()).hexdigest()[:20]
    cached = cache_root() / "baselines" / key / "eval.json"
    if cached.is_file():
        result = EvalResult.from_json(json.loads(cached.read_text()))
        options.say(f"[baseline] cached ({key})")
    else:
        options.say("[baseline] evaluating the base model")
        model = load_model(spec.model, toy=world)
        result = evaluate(spec, model, prep.tokenizer, spec_path, world, options.progress)
        write_json(cached, result.to_json())
    write_json(out / "baseline" / "eval.json", result.to_json())
    write_json(out / "baseline" / SAMPLES_FILE, result.samples)
    return rec.model_copy(update={"status": "ok", "reason": None, "metrics": result.metrics,
                                  "samples_file": f"baseline/{SAMPLES_FILE}"})


# --------------------------------------------------------------------------- the spec
def run_spec(spec_path: Path, options: RunOptions) -> Results:
    """Run every sweep point of one spec (skipping finished ones) and write results.json."""
    spec = load_spec(spec_path, overrides=options.overrides, profile=options.profile)
    if spec.magic is not None:
        from unlearnspec.magic.job import run_magic_spec

        return run_magic_spec(spec, spec_path, options)
    out = output_dir(spec, spec_path, options)
    resolved = spec.model_dump(mode="json", exclude_none=True)
    digest = spec_hash(resolved)
    check_same_spec(out, digest)
    for stale in clean_stale_tmp(out):
        options.say(f"[resume] removed the unfinished {stale.name}")
    world = toy_world(options)
    options.say(f"[{spec.name}] {len(spec.training.lrs)} point(s) -> {out}")
    prep = prepare(spec, spec_path, options, world)
    s = prep.stats
    options.say(
        f"[tokens] {s.selected_tokens:,} of {s.valid_tokens:,} valid tokens selected ({s.selected_fraction:.1%}); "
        f"{s.ascending_tokens:,} ascend, {s.descending_tokens:,} descend; normalizer {s.normalizer}, "
        f"per-token step x{s.per_token_lr_factor:.2f} vs an all-tokens run"
    )
    base = baseline(spec, spec_path, out, prep, world, options)
    records: list[RunRecord] = []
    for lr in spec.training.lrs:
        final = out / point_dir_name(f"lr={lr:g}")
        done = read_point(final)
        if done is not None and (done["status"] == "ok" or not options.retry_failed):
            options.say(f"[resume] lr={lr:g} already {done['status']}; skipped")
        else:
            done = run_point(spec, resolved, spec_path, prep, lr, final, options, world, digest)
            summary = ", ".join(f"{t} {m['acc']:.4f}" for t, m in done.get("metrics", {}).items())
            options.say(f"[lr={lr:g}] {done['status']}" + (f": {summary}" if summary else f" ({done.get('reason')})"))
        records.append(_run_record(done, final, out))
        _save(spec, spec_path, options, out, base, records)
    return _save(spec, spec_path, options, out, base, records)


def _run_record(point: dict[str, Any], final: Path, out: Path) -> RunRecord:
    ok = point["status"] == "ok"
    return RunRecord(
        point=point["point"],
        hparams=point["hparams"],
        status=point["status"],
        reason=point.get("reason"),
        metrics={k: TaskMetrics.model_validate(v) for k, v in point.get("metrics", {}).items()},
        samples_file=f"{final.name}/{SAMPLES_FILE}" if ok else None,
        token_stats=TokenStats.model_validate(point["token_stats"]) if point.get("token_stats") else None,
        run_dir=os.path.relpath(final, out),
        train_seconds=point.get("train_seconds"),
        eval_seconds=point.get("eval_seconds"),
    )


def _save(spec: Spec, spec_path: Path, options: RunOptions, out: Path, base: Optional[BaselineRecord],
          records: list[RunRecord]) -> Results:
    control_name = None
    if spec.control is not None:
        control_name = load_spec(resolve_path(spec_path, spec.control), profile=options.profile, check_refs=False).name
    info = SpecInfo(
        name=spec.name,
        hash=spec_hash(spec.model_dump(mode="json", exclude_none=True)),
        path=str(spec_path),
        profile=options.profile.stem if options.profile else None,
        control=control_name,
        control_path=spec.control,
        metric=spec.eval.metric if spec.eval else "acc",
        tasks=[t.name for t in spec.eval.tasks] if spec.eval else [],
    )
    results = Results(spec=info, baseline=base, runs=records, provenance=provenance(project_root(spec_path)))
    save_results(results, out)
    return results
