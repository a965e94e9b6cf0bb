"""torchrun worker: MAGIC scores of a WeightedSFTTrainer run under data parallelism (float64 tiny GPT-NeoX).

Usage: torchrun --nproc-per-node W tests/workers/magic_ddp.py OUT_DIR [fsdp | fsdp_ac]
With `fsdp` the run trains under FSDP2 full_shard (`fsdp_ac`: with activation checkpointing), every rank records
its own parameter shards, and the scores come from the sharded reverse pass (`magic.sharded`); rank 0 writes
OUT_DIR/magic_fsdp.pt (no mutation there).
Trains 4 SGD steps (batch_size 8 rows = W ranks x micro_batch_size 4/W x 2 micro-batches, shuffled, warmup+decay,
weight decay) with MagicCallback recording to disk, then runs the reverse pass three ways on the same
trajectory: as shipped; with 1-row double backwards and CPU-offloaded adjoints and states; and with the
Hessian-vector-product all-reduce removed (the mutation); and per question, from batched adjoints. Rank 0 writes OUT_DIR/magic.pt.
The test process imports `run` to compute the one-process reference the same way.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import torch

ROWS, SEQ, STEPS, GLOBAL_ROWS, GA = 8, 10, 4, 4, 2


def _query(model):
    from unlearnspec.magic.query import QueryBatch, QueryLoss
    from unlearnspec.train.loss import IGNORE_INDEX

    ids = torch.tensor([[5, 9, 14, 3, 7, 2], [8, 8, 21, 4, 0, 0], [30, 2, 11, 6, 9, 1]])
    mask = torch.tensor([[1] * 6, [1, 1, 1, 1, 0, 0], [1] * 6])
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[0, 3:] = ids[0, 3:]
    labels[1, 2:4] = ids[1, 2:4]
    labels[2, 5] = ids[2, 5]
    batch = QueryBatch(ids, mask, labels, "tiny", "answer_continuation", 0, ("a", "b", "c"))
    return QueryLoss(model, batch, batch_size=1)  # three parts: dealt over the ranks


def run(out: Path, states: Path, strategy: str = "ddp") -> dict:
    from tests.tiny import tiny_model, tiny_texts, tiny_tokenizer
    from unlearnspec.data import build_grid
    from unlearnspec.magic import magic_scores, register_replay_attention
    from unlearnspec.magic.callback import MagicCallback
    from unlearnspec.magic.reverse import _Replay
    from unlearnspec.spec import ParallelSpec, TrainingSpec
    from unlearnspec.train.parallel import Placement
    from unlearnspec.train.trainer import LossSetup, WeightedSFTTrainer, grid_dataset, sft_config

    world = int(os.environ.get("WORLD_SIZE", "1"))
    torch.set_num_threads(1)
    grid = build_grid(tiny_texts(ROWS, seed=5), tiny_tokenizer(), SEQ, "tiny")
    spec = TrainingSpec.model_validate(
        dict(
            optimizer={"name": "sgd", "weight_decay": 0.05},
            lr=0.8,
            batch_size=GLOBAL_ROWS * GA,
            micro_batch_size=GLOBAL_ROWS // world,
            max_steps=STEPS,
            schedule="linear",
            warmup_steps=1,
            shuffle=True,
            seed=3,
        )
    )
    model = tiny_model(layers=2, hidden=16, heads=2, seed=7, dtype=torch.float64, attn=register_replay_attention())
    cb = MagicCallback(STEPS, "sqrt", storage="disk", storage_dir=states)
    with tempfile.TemporaryDirectory() as tmp:
        parallel = (
            ParallelSpec(strategy="fsdp", fsdp={"activation_checkpointing": True})
            if strategy == "fsdp_ac"
            else ParallelSpec(strategy=strategy)
        )
        args = sft_config(spec, 0.8, Path(tmp), ROWS, Placement(device=torch.device("cpu"), parallel=parallel))
        trainer = WeightedSFTTrainer(
            model=model,
            args=args,
            train_dataset=grid_dataset(grid, grid.valid_targets.double()),
            processing_class=tiny_tokenizer(),
            callbacks=[cb],
            training=spec,
            loss=LossSetup(normalizer="valid", fused_head=False),
        )
        cb.attach(trainer)
        trainer.train()
    traj = cb.trajectory
    assert traj is not None
    if strategy.startswith("fsdp"):
        return _sharded(trainer, traj, grid, world, out)
    query = _query(model)
    result = {
        "world": world,
        "steps": [[mb.tolist() for mb in step.micro_batches] for step in traj.steps],
        "lrs": traj.lrs,
        "final": {n: p.detach().clone() for n, p in model.named_parameters()},
        "scores": magic_scores(model, grid, traj, query, dtype=None),
        "scores_rows1_offload": magic_scores(
            model, grid, traj, query, dtype=None, micro_batch_rows=1, offload_adjoint=True, offload_states=True
        ),
    }
    from unlearnspec.magic.per_question import QuestionChunks, per_question_scores

    result["per_question"] = per_question_scores(
        model, grid, traj, query, QuestionChunks(2), dtype=None
    ).scores  # 2 batched passes
    saved = _Replay._reduce_hvp
    _Replay._reduce_hvp = lambda self, hv: None  # the mutation: each rank keeps only its own rows' H v
    try:
        result["scores_no_hvp_reduce"] = magic_scores(model, grid, traj, query, dtype=None)
    finally:
        _Replay._reduce_hvp = saved
    if int(os.environ.get("RANK", "0")) == 0:
        torch.save(result, out / "magic.pt")
    return result


def _sharded(trainer, traj, grid, world: int, out: Path) -> dict:
    """Scores of an FSDP-trained run from the sharded pass, and the recorded shards against the gathered model."""
    from unlearnspec.magic import magic_scores
    from unlearnspec.magic.per_question import QuestionChunks, per_question_scores
    from unlearnspec.magic.sharded import default_group, rebind_query, shard_for_replay
    from unlearnspec.magic.trajectory import plain_name
    from unlearnspec.train.parallel import full_state_dict

    final = {plain_name(n): t for n, t in full_state_dict(trainer.model).items()}  # a collective: every rank joins
    group = default_group()
    kept = traj.store.get(traj.total_steps)
    skeleton, comm = shard_for_replay(trainer.model)
    query = rebind_query(_query(skeleton), skeleton)
    result = {
        "world": world,
        "shard_world": traj.shard_world,
        "lrs": traj.lrs,
        "steps": [[mb.tolist() for mb in step.micro_batches] for step in traj.steps],
        "final": {n: final[n] for n in traj.param_names},
        "shards_match": all(torch.equal(kept[n], group.shard(final[n])) for n in traj.param_names),
        "local_numel": sum(kept[n].numel() for n in traj.param_names),
        "scores": magic_scores(skeleton, grid, traj, query, dtype=None, comm=comm),
        "scores_rows1_offload": magic_scores(
            skeleton,
            grid,
            traj,
            query,
            dtype=None,
            comm=comm,
            micro_batch_rows=1,
            offload_adjoint=True,
            offload_states=True,
        ),
        "per_question": per_question_scores(
            skeleton, grid, traj, query, QuestionChunks(2), dtype=None, comm=comm
        ).scores,
    }
    if int(os.environ.get("RANK", "0")) == 0:
        torch.save(result, out / "magic_fsdp.pt")
    return result


def main() -> None:
    out = Path(sys.argv[1])
    run(out, out / "states", *(sys.argv[2:3] or ["ddp"]))


if __name__ == "__main__":
    main()
