"""The score recipe: train the MAGIC spec's run (SGD, Adam or AdamW) under MagicCallback, run the exact reverse pass, and write
per_token_scores.pt + per_example_scores.pt + scores.json into the job's work folder (with `per: task` also
one per_token_scores.<leaf>.pt per leaf task of the query, see `magic.per_task`)."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from unlearnspec import worlds
from unlearnspec.run.context import RunContext
from unlearnspec.run.plan import Job
from unlearnspec.run.results import RunRecord
from unlearnspec.run.steps import Timer, batch_record, gathered_model, prepare, save_model, train, write_spec
from unlearnspec.train import dist

if TYPE_CHECKING:
    from unlearnspec.magic.per_question import QuestionScores
    from unlearnspec.magic.per_task import TaskScores


def run_score(job: Job, ctx: RunContext, workdir: Path) -> RunRecord:
    import torch

    from unlearnspec.data import SpecGrid, grid_inputs
    from unlearnspec.magic import ReplayStats, ScoreProvenance, magic_scores, write_scores
    from unlearnspec.magic.callback import MagicCallback
    from unlearnspec.magic.output import QueryScores, write_question_scores, write_task_scores
    from unlearnspec.magic.per_question import QuestionChunks, per_question_scores
    from unlearnspec.magic.per_task import extra_passes, per_task_scores
    from unlearnspec.magic.query import build_query
    from unlearnspec.magic.replay_options import ReplayOptions
    from unlearnspec.train.trainer import total_steps

    spec, magic = job.spec, job.spec.magic
    assert magic is not None
    ctx.say(
        f"[{spec.name}] MAGIC scores: {spec.training.optimizer.name} lr={job.lr:g}, "
        f"query {magic.query.task} ({magic.query.loss}), checkpoints {magic.checkpoints}"
    )
    prep = prepare(job, ctx)
    write_spec(job, workdir)
    steps = total_steps(spec.training, prep.grid.input_ids.shape[0])
    states = shared_states_dir(job, workdir)
    callback = MagicCallback(
        steps,
        magic.checkpoints,
        magic.storage,
        states,
        precision=spec.training.precision,
        dropout=spec.training.dropout,
    )
    with Timer() as train_clock:
        trainer = train(spec, prep, workdir, ctx, callbacks=[callback], exact_replay=True)
    if trainer.model is None:  # transformers types it Optional; a trainer that trained holds its model
        raise RuntimeError("the trainer holds no model after training")
    model, comm = trainer.model, None
    if callback.trajectory is not None and callback.trajectory.shard_world > 1:  # FSDP: each rank recorded its shards
        from unlearnspec.magic.sharded import shard_for_replay

        model, comm = shard_for_replay(trainer.model)  # a parameter-free skeleton that all-gathers layer by layer
        ctx.say(
            f"[{spec.name}] sharded reverse pass: each of {comm.world_size} ranks holds 1/{comm.world_size} of every "
            "parameter-sized tensor"
        )
    query = build_query(
        magic.query, model, prep.tokenizer, include_path=[str(p) for p in ctx.include_paths(job.spec_path)]
    )
    memory = magic.memory
    chunk = memory.question_chunk if memory else 16
    leaf_passes = {"task": extra_passes(query), "question": -(-query.batch.n_questions // chunk)}.get(
        magic.query.per, 0
    )
    extra = {"task": f" (+{leaf_passes} leaf tasks)", "question": f" (+{leaf_passes} passes of {chunk} questions)"}
    task = ctx.task(f"MAGIC reverse pass {spec.name}" + extra.get(magic.query.per, ""), total=steps * (1 + leaf_passes))

    def progress(done: int, total: int) -> None:
        ctx.advance(task, completed=done, total=total * (1 + leaf_passes))

    stats = ReplayStats()
    park: contextlib.AbstractContextManager = contextlib.nullcontext()
    if comm is not None:  # the sharded pass never reads the trained shards or m, v: off the GPU until it ends
        from unlearnspec.magic.sharded import parked, trained_tensors

        park = parked(trained_tensors(trainer.model, trainer.optimizer))
    replay = ReplayOptions(
        micro_batch_rows=memory.replay_batch_size if memory else None,
        offload_adjoint=bool(memory and memory.offload_adjoint),
        offload_states=bool(memory and memory.offload_states),
        comm=comm,
    )
    trajectory = callback.trajectory
    if trajectory is None:
        raise RuntimeError(f"[{spec.name}] MagicCallback recorded no trajectory (training did not start)")
    per_task: dict[str, TaskScores] = {}
    per_question: Optional[QuestionScores] = None
    with Timer() as reverse_clock, park:
        try:
            scores = magic_scores(
                model,
                prep.grid,
                trajectory,
                query,
                **(replay | {"dtype": torch.float32, "progress": progress, "stats": stats}),
            )
            if magic.query.per == "task":  # before the states below are deleted
                per_task = per_task_scores(
                    model,
                    prep.grid,
                    trajectory,
                    query,
                    scores,
                    **(replay | {"progress": lambda done, total: progress(steps + done, steps)}),
                )
            elif magic.query.per == "question":
                per_question = per_question_scores(
                    model,
                    prep.grid,
                    trajectory,
                    query,
                    QuestionChunks(chunk),
                    **(replay | {"progress": lambda done, total: progress(steps + done, steps)}),
                )
        finally:
            ctx.done(task)
            dist.barrier()  # every rank is past its last read of the states
            if ctx.is_main and states != workdir / ".magic-states":
                shutil.rmtree(states, ignore_errors=True)
    leaves = {"per_task": write_task_scores(workdir, per_task)} if per_task else {}
    if per_question is not None:
        leaves["per_question"] = write_question_scores(workdir, per_question)
    world = worlds.registered()  # the toy world's hook: scores vs the recorded fact spans ({} elsewhere)
    hook = world.score_quality if world is not None else None
    quality = (
        hook(
            SpecGrid(spec, job.spec_path, ctx.assets, prep.grid, prep.tokenizer),
            QueryScores(
                query.batch.info()["task"], scores, per_task, per_question.scores if per_question is not None else None
            ),
            ctx.say,
        )
        if hook
        else {}
    )
    write_scores(
        workdir,
        scores,
        trajectory,
        ScoreProvenance(
            prep.grid.fingerprint, query.batch.info(), spec.model.dtype, job.lr, grid_inputs(prep.grid, spec.data)
        ),
        extra={
            **leaves,
            **quality,
            "spec": spec.name,
            "spec_hash": job.hash,
            "model": ctx.assets.model_id(spec.model),
            "train_seconds": train_clock.seconds,
            "reverse_seconds": reverse_clock.seconds,
            "world_size": ctx.world_size,
            "batch": batch_record(spec, prep, ctx).model_dump(),
            "sharded": comm is not None,
            "reverse_pass": {
                "adjoint_gain": stats.adjoint_gain,
                "adjoint_growth": stats.adjoint_growth,
                "rounding_risk": stats.rounding_risk,
                "peak_state_copies": stats.peak_state_copies,
            },
        },
    )
    from unlearnspec.magic.lds import save_trajectory_plan

    save_trajectory_plan(workdir, trajectory)  # what `magic.lds` / `unlearnspec lds` retrain from
    model_dir = None
    if spec.output.save_model != "none":
        trained = gathered_model(trainer, spec, ctx) if comm is not None else trainer.model  # FSDP: all ranks gather
        model_dir = save_model(spec, trained, prep.tokenizer, workdir) if trained is not None else None
    neg = float((scores < 0).float().sum() / prep.grid.valid_targets.sum())
    ctx.say(
        f"[{spec.name}] scores written ({train_clock.seconds:.1f}s training, {reverse_clock.seconds:.1f}s reverse "
        f"pass); {neg:.1%} of valid tokens are proponents (score < 0)"
    )
    return RunRecord(
        point=job.point,
        hparams={"lr": job.lr},
        status="ok",
        run_dir=".",
        token_stats=prep.stats,
        train_seconds=train_clock.seconds,
        spec_hash=job.hash,
        model_dir=model_dir,
        batch=batch_record(spec, prep, ctx),
    )


def shared_states_dir(job: Job, workdir: Path) -> Path:
    """Where `storage: disk` keeps parameter states: inside the job's folder in one process; beside it,
    where every rank can read what rank 0 wrote, under torchrun (each rank has its own work folder)."""
    if dist.world_size() == 1:
        return workdir / ".magic-states"
    return job.out.parent / f".tmp-magic-states-{job.out.name}"
