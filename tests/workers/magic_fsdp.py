"""torchrun worker: the sharded (FSDP) MAGIC reverse pass on W ranks against one process (float64 tiny GPT-NeoX).

Usage: torchrun --nproc-per-node W tests/workers/magic_fsdp.py OUT_DIR
Every rank records the same one-process trajectories (stock torch.optim, deterministic), then replays each case
sharded over the W ranks, each rank slicing the states to its rows: SGD with weight decay (`sqrt`, 2 micro-batches
per step, so at W=3 one rank runs a zero-weighted forward), SGD with 1-row double backwards, disk storage and both
offloads (`log`), AdamW with clipping active (`all`, and `sqrt`), and per-question scores from K=4 batched adjoints
(SGD and AdamW). Then the mutation: the reduce-scatter replaced by a local slice (`shard_ops.SUM_ACROSS_RANKS`).
Rank 0 writes OUT_DIR/fsdp.pt; the test computes the one-process references with `reference(case)`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

STEPS, BATCH = 4, 3
MAX_NORM = 0.05  # below every step's gradient norm of the AdamW run: clipping is active (the test asserts it)


def _query(model):
    from tests.test_magic import VOCAB
    from unlearnspec.magic.query import QueryBatch, QueryLoss
    from unlearnspec.train.loss import IGNORE_INDEX

    gen = torch.Generator().manual_seed(4)
    ids = torch.randint(0, VOCAB, (4, 7), generator=gen)
    mask = torch.ones_like(ids)
    mask[2, 5:] = 0
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[0, 4:] = ids[0, 4:]
    labels[1, 6] = ids[1, 6]
    labels[2, 3:5] = ids[2, 3:5]
    labels[3, 2:] = ids[3, 2:]
    batch = QueryBatch(ids, mask, labels, "tiny", "answer_continuation", 0, ("a", "b", "c", "d"))
    return QueryLoss(model, batch, batch_size=3)  # two parts: dealt over the ranks, W=3 gets a short rank


CASES = {
    # name: (optimizer, schedule, storage, replay keywords, per question)
    "sgd_sqrt": ("sgd", "sqrt", "ram", {}, False),
    "sgd_all_rows1": ("sgd", "all", "ram", {"micro_batch_rows": 1}, False),
    "sgd_log_disk_offload": ("sgd", "log", "disk", {"offload_adjoint": True, "offload_states": True}, False),
    "adamw_clip_all": ("adamw", "all", "ram", {}, False),
    "adamw_clip_sqrt_offload": ("adamw", "sqrt", "ram", {"offload_adjoint": True, "offload_states": True}, False),
    "sgd_questions_k4": ("sgd", "sqrt", "ram", {}, True),
    "adamw_questions_k4": ("adamw", "all", "ram", {}, True),
}


def record(name: str, states: Path):
    """(model at theta_T, grid, trajectory, query) of a case, recorded in this process."""
    from tests.test_magic import N, hf_style_decay, tiny_grid, tiny_model
    from unlearnspec.magic import DiskStore, ReferenceRun, TrajectoryRecorder, plan_steps, sgd_train, trainable_params
    from unlearnspec.magic.optimizers import OptimizerConfig

    opt, schedule, storage, _, _ = CASES[name]
    model, grid = tiny_model(), tiny_grid()
    theta0 = trainable_params(model)
    decay = hf_style_decay(dict(theta0), 0.1) if opt != "sgd" else 0.05
    lrs = (
        [1e-2 * (t + 1) / STEPS for t in range(STEPS)] if opt != "sgd" else [2.0 * (1 - 0.1 * t) for t in range(STEPS)]
    )
    plan = plan_steps(N, STEPS, BATCH, lrs, grad_accum=2, seed=3)
    config = OptimizerConfig(opt, max_grad_norm=MAX_NORM if opt != "sgd" else None)  # type: ignore[arg-type]
    store = DiskStore(states / name) if storage == "disk" else None
    recorder = TrajectoryRecorder(STEPS, schedule, store=store, weight_decay=decay, optimizer=config)  # type: ignore[arg-type]
    traj = sgd_train(
        model,
        grid,
        ReferenceRun(plan, weight_decay=decay, optimizer=config),
        recorder=recorder,
        use_replay_attention=True,
    )
    return model, grid, traj, _query(model)


def _scores(model, grid, traj, query, name: str, comm=None) -> torch.Tensor:
    from unlearnspec.magic import magic_scores
    from unlearnspec.magic.per_question import QuestionChunks, per_question_scores

    kwargs = dict(CASES[name][3])
    if CASES[name][4]:
        return per_question_scores(model, grid, traj, query, QuestionChunks(4), dtype=None, comm=comm, **kwargs).scores
    return magic_scores(model, grid, traj, query, dtype=None, comm=comm, **kwargs)


def reference(name: str, states: Path) -> torch.Tensor:
    """One process, the unsharded pass."""
    from unlearnspec.magic.collective import Alone

    model, grid, traj, query = record(name, states)
    return _scores(model, grid, traj, query, name, comm=Alone())


def sharded(name: str, states: Path, group=None) -> torch.Tensor:
    """The sharded pass over the ranks of `group` (default: the process group)."""
    from unlearnspec.magic.sharded import rebind_query, shard_for_replay

    model, grid, traj, query = record(name, states)
    skeleton, comm = shard_for_replay(model, group)
    return _scores(skeleton, grid, traj, rebind_query(query, skeleton), name, comm=comm)


def main() -> None:
    import torch.distributed as dist

    from unlearnspec.magic import shard_ops

    out = Path(sys.argv[1])
    torch.set_num_threads(1)
    if not dist.is_initialized():
        dist.init_process_group("gloo")
    rank = dist.get_rank()
    states = out / f"states-rank{rank}"  # each rank records its own copy of the same run
    result: dict = {"world": dist.get_world_size()}
    for name in CASES:
        result[name] = sharded(name, states)
    shard_ops.SUM_ACROSS_RANKS = False  # the mutation: no reduce-scatter (gradient and H v stay per rank)
    try:
        result["mutant_sgd_sqrt"] = sharded("sgd_sqrt", states)
    finally:
        shard_ops.SUM_ACROSS_RANKS = True
    if rank == 0:
        torch.save(result, out / "fsdp.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
