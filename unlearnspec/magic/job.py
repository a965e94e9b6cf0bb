"""Run a MAGIC score spec: train (SGD, Adam or AdamW) under MagicCallback, run the exact reverse pass,
and write per_token_scores.pt + per_example_scores.pt + scores.json into the spec's output dir."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from unlearnspec.run.results import Results, RunRecord, SpecInfo, save_results
from unlearnspec.run.rundirs import provenance, spec_hash
from unlearnspec.scores import SCORES_FILE, SIDECAR_FILE
from unlearnspec.spec import Spec
from unlearnspec.spec.load import project_root


def _done(out: Path, digest: str) -> bool:
    side = out / SIDECAR_FILE
    if not (side.is_file() and (out / SCORES_FILE).is_file()):
        return False
    try:
        return json.loads(side.read_text()).get("spec_hash") == digest
    except (OSError, json.JSONDecodeError):
        return False


def run_magic_spec(spec: Spec, spec_path: Path, options: Any) -> Results:
    from unlearnspec.run.runner import output_dir

    assert spec.magic is not None
    out = output_dir(spec, spec_path, options)
    resolved = spec.model_dump(mode="json", exclude_none=True)
    digest = spec_hash(resolved)
    lr = spec.training.lrs[0]
    record = RunRecord(point=f"lr={lr:g}", hparams={"lr": lr}, status="ok", run_dir=".")
    if _done(out, digest):
        options.say(f"[{spec.name}] scores already computed in {out}; skipped")
    else:
        record = _produce(spec, spec_path, options, out, digest, lr)
    results = Results(
        spec=SpecInfo(name=spec.name, hash=digest, path=str(spec_path),
                      profile=options.profile.stem if options.profile else None),
        runs=[record],
        provenance=provenance(project_root(spec_path)),
    )
    save_results(results, out)
    return results


def _produce(spec: Spec, spec_path: Path, options: Any, out: Path, digest: str, lr: float) -> RunRecord:
    import torch

    from unlearnspec.run.runner import prepare, toy_world, train_point

    from unlearnspec.magic import ReplayStats, magic_scores, write_scores
    from unlearnspec.magic.callback import MagicCallback
    from unlearnspec.train.modeling import model_id
    from unlearnspec.magic.query import build_query
    from unlearnspec.train.trainer import total_steps

    assert spec.magic is not None
    world = toy_world(options)
    options.say(f"[{spec.name}] MAGIC scores: {spec.training.optimizer.name} lr={lr:g}, "
                f"query {spec.magic.query.task} ({spec.magic.query.loss}), checkpoints {spec.magic.checkpoints}")
    prep = prepare(spec, spec_path, options, world)
    out.mkdir(parents=True, exist_ok=True)
    states = out / ".magic-states"
    shutil.rmtree(states, ignore_errors=True)
    steps = total_steps(spec.training, prep.grid.input_ids.shape[0])
    callback = MagicCallback(steps, spec.magic.checkpoints, spec.magic.storage, states,
                             precision=spec.training.precision, dropout=spec.training.dropout)
    start = time.perf_counter()
    try:
        trainer = train_point(spec, prep, lr, out, options, world, extra_callbacks=[callback], setup=callback.attach,
                              exact_replay=True)
        train_seconds = time.perf_counter() - start
        model = trainer.model
        include = [str(project_root(spec_path) / "plugins")] + ([str(world.task_dir)] if world is not None else [])
        query = build_query(spec.magic.query, model, prep.tokenizer, include_path=include)
        task = options.progress.add_task("MAGIC reverse pass", total=steps) if options.progress is not None else None

        def progress(done: int, total: int) -> None:
            if task is not None:
                options.progress.update(task, completed=done, total=total)

        start = time.perf_counter()
        stats = ReplayStats()
        scores = magic_scores(model, prep.grid, callback.trajectory, query, dtype=torch.float32, progress=progress, stats=stats)
        reverse_seconds = time.perf_counter() - start
        if task is not None:
            options.progress.remove_task(task)
        write_scores(out, scores, callback.trajectory, fingerprint=prep.grid.fingerprint, query=query.batch.info(),
                     dtype=spec.model.dtype, lr=lr,
                     extra={"spec": spec.name, "spec_hash": digest, "model": model_id(spec.model, toy=world),
                            "train_seconds": round(train_seconds, 3), "reverse_seconds": round(reverse_seconds, 3),
                            "reverse_pass": {"adjoint_gain": stats.adjoint_gain, "adjoint_growth": stats.adjoint_growth,
                                             "rounding_risk": stats.rounding_risk,
                                             "peak_state_copies": stats.peak_state_copies}})
    finally:
        shutil.rmtree(states, ignore_errors=True)
        shutil.rmtree(out / "trainer", ignore_errors=True)
    neg = float((scores < 0).float().sum() / prep.grid.valid_targets.sum())
    options.say(f"[{spec.name}] scores written ({train_seconds:.1f}s training, {reverse_seconds:.1f}s reverse pass); "
                f"{neg:.1%} of valid tokens are proponents (score < 0)")
    return RunRecord(point=f"lr={lr:g}", hparams={"lr": lr}, status="ok", run_dir=".", token_stats=prep.stats,
                     train_seconds=train_seconds)
