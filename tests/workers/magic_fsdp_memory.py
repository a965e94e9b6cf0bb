"""torchrun worker: peak tracked memory of the sharded reverse pass per rank, against one process.

Usage: torchrun --nproc-per-node W tests/workers/magic_fsdp_memory.py OUT_DIR
A float32 GPT-NeoX of 8 layers (d=64) trained 16 AdamW steps (`sqrt`: segments of 4 states, theta, m and v each)
on 1-row batches of 8 tokens, so parameter-sized tensors dominate what the pass holds. Every rank records the
same run, writes its own row shards to disk (as an FSDP run records them), and replays them sharded under
`memtrack.LiveBytes` (every storage allocated during the pass, freed ones uncounted). Rank r writes
OUT_DIR/memory.rank{r}.json; the test measures one process with `measure(None, ...)`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

LAYERS, HIDDEN, HEADS, VOCAB, ROWS, SEQ, STEPS = 8, 64, 4, 64, 8, 8, 16


SHAPE = {"layers": LAYERS, "hidden": HIDDEN, "heads": HEADS, "vocab": VOCAB, "seq": SEQ, "rows": 1}


def record(
    states: Path,
    tag: str | None,
    group=None,
    optimizer: str = "adamw",
    schedule: str = "sqrt",
    steps: int = STEPS,
    shape: dict | None = None,
):
    """(model, grid, trajectory on disk: whole states, or this rank's shards with `tag`, query); `shape`: layers,
    hidden, heads, vocab, seq and rows per step (default `SHAPE`)."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from tests.test_magic import Grid
    from tests.workers.magic_fsdp import _query
    from unlearnspec.magic import (
        DiskStore,
        ReferenceRun,
        TrajectoryRecorder,
        plan_steps,
        register_replay_attention,
        sgd_train,
    )
    from unlearnspec.magic.optimizers import OptimizerConfig
    from unlearnspec.magic.trajectory import Trajectory

    sh = {**SHAPE, **(shape or {})}
    torch.manual_seed(0)
    config = GPTNeoXConfig(
        vocab_size=sh["vocab"],
        hidden_size=sh["hidden"],
        num_hidden_layers=sh["layers"],
        num_attention_heads=sh["heads"],
        intermediate_size=4 * sh["hidden"],
        max_position_embeddings=64,
        attention_dropout=0.0,
        hidden_dropout=0.0,
    )
    config._attn_implementation = register_replay_attention()
    model = GPTNeoXForCausalLM(config)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, sh["vocab"], (ROWS, sh["seq"]), generator=gen)
    grid = Grid(ids, torch.ones_like(ids), ids.clone())
    opt = OptimizerConfig(optimizer)  # type: ignore[arg-type]
    plan = plan_steps(ROWS, steps, sh["rows"], 1e-3 if optimizer != "sgd" else 0.1, seed=3)
    recorder = TrajectoryRecorder(steps, schedule, weight_decay=0.0, optimizer=opt)  # type: ignore[arg-type]
    traj = sgd_train(model, grid, ReferenceRun(plan, optimizer=opt), recorder=recorder, use_replay_attention=True)
    store = DiskStore(states, tag=tag)
    for step in traj.store.steps():  # on disk, as the run would have written them (the RAM copies are dropped)
        kept = traj.store.get(step)
        store.put(step, {k: group.shard(v) if group is not None else v for k, v in kept.items()})
    world = group.world_size if group is not None else 1
    disk = Trajectory(traj.steps, store, traj.schedule, traj.weight_decay, traj.param_names, traj.optimizer, world)
    return model, grid, disk, _query(model)


def measure(group, states: Path, questions: int = 0, replay: dict | None = None, **run) -> dict:
    """Peak tracked bytes of one reverse pass: plain (group None) or sharded over `group`; `run`: the keywords of
    `record`; `replay`: those of `magic_scores`; `questions`: K > 0 scores the 4 questions K at a time (batched)."""
    from unlearnspec.magic import magic_scores
    from unlearnspec.magic.collective import Alone
    from unlearnspec.magic.memtrack import LiveBytes
    from unlearnspec.magic.per_question import QuestionChunks, per_question_scores
    from unlearnspec.magic.sharded import rebind_query, shard_for_replay

    tag = f"rank{group.rank}of{group.world_size}" if group is not None else None
    model, grid, traj, query = record(states, tag, group, **run)
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    comm: object = Alone()
    if group is not None:
        model, comm = shard_for_replay(model, group)
        query = rebind_query(query, model)
    with LiveBytes() as mem:
        if questions:
            scores = per_question_scores(
                model, grid, traj, query, QuestionChunks(questions), comm=comm, **(replay or {})
            ).scores
        else:
            scores = magic_scores(model, grid, traj, query, comm=comm, **(replay or {}))
    return {"peak": mem.peak, "param_bytes": params, "scores_norm": float(scores.norm())}


def main() -> None:
    import torch.distributed as dist

    from unlearnspec.magic.sharded import default_group

    out = Path(sys.argv[1])
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    group = default_group()
    result = measure(group, out / f"states-rank{group.rank}")
    result["world"] = group.world_size
    (out / f"memory.rank{group.rank}.json").write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
