"""torchrun worker: train WeightedSFTTrainer on a tiny GPT-NeoX for each case and save the final parameters.

Usage: torchrun --nproc-per-node W tests/workers/ddp_train.py OUT_DIR CASES_JSON
Each case: {"name", "normalizer", "batch_size" (global), "micro_batch_size", "shuffle", "strategy", "drop_factor", "sharding"}.
Rank 0 writes OUT_DIR/<name>.pt with the full final parameters (float64, name order), the initial
parameters and the parameter elements each rank held locally after training (FSDP sharding check).
`drop_factor` trains with the world-size loss factor removed (the mutation the tests must catch).
The test process imports `run_case` to train the one-process reference in the same way.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROWS, SEQ, LR, STEPS = 16, 24, 0.5, 2


def grid_and_weights():
    from tests.tiny import tiny_texts, tiny_tokenizer
    from unlearnspec.data import build_grid

    grid = build_grid(tiny_texts(ROWS, 0), tiny_tokenizer(), SEQ, "tiny")
    g = torch.Generator().manual_seed(7)
    signed = torch.randn(grid.input_ids.shape, generator=g) * (torch.rand(grid.input_ids.shape, generator=g) > 0.3)
    return grid, signed * grid.valid_targets  # signed weights with zeros: every normalizer differs


def flat(named) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1).to(torch.float64).cpu() for _, t in sorted(named, key=lambda kv: kv[0])])


def local_numel(model: torch.nn.Module) -> int:
    """Parameter elements this rank stores (a DTensor's local shard for FSDP2)."""
    total = 0
    for p in model.parameters():
        total += p.to_local().numel() if hasattr(p, "to_local") else p.numel()
    return total


def run_case(case: dict, out: Path) -> dict:
    from accelerate.state import AcceleratorState

    from tests.tiny import tiny_model, tiny_tokenizer
    from unlearnspec.spec import ParallelSpec, TrainingSpec
    from unlearnspec.train.parallel import Placement, full_state_dict
    from unlearnspec.train.trainer import LossSetup, WeightedSFTTrainer, grid_dataset, sft_config

    AcceleratorState._reset_state(reset_partial_state=False)  # DDP and FSDP cases share one launch
    grid, weights = grid_and_weights()
    training = TrainingSpec.model_validate(
        dict(
            optimizer={"name": "sgd"},
            lr=LR,
            batch_size=case["batch_size"],
            micro_batch_size=case.get("micro_batch_size"),
            max_steps=STEPS,
            seed=0,
            shuffle=case.get("shuffle", False),
        )
    )
    parallel = ParallelSpec(
        strategy=case.get("strategy", "ddp"),
        **({"fsdp": {"sharding": case.get("sharding", "full_shard")}} if case.get("strategy") == "fsdp" else {}),
    )
    model = tiny_model()
    initial = flat(model.named_parameters())
    with tempfile.TemporaryDirectory() as tmp:
        args = sft_config(training, LR, Path(tmp), ROWS, Placement(device=torch.device("cpu"), parallel=parallel))
        trainer = WeightedSFTTrainer(
            model=model,
            args=args,
            train_dataset=grid_dataset(grid, weights),
            processing_class=tiny_tokenizer(),
            training=training,
            loss=LossSetup(normalizer=case["normalizer"]),
        )
        saved = WeightedSFTTrainer._data_parallel_factor
        if case.get("drop_factor"):
            WeightedSFTTrainer._data_parallel_factor = lambda self: 1  # the mutation: no world-size factor
        try:
            started = time.perf_counter()
            trainer.train()
            seconds = time.perf_counter() - started
        finally:
            WeightedSFTTrainer._data_parallel_factor = saved
        mine = local_numel(trainer.model)
        state = full_state_dict(trainer.accelerator.unwrap_model(trainer.model))  # all-gathers FSDP shards
    world = int(os.environ.get("WORLD_SIZE", "1"))
    numels = [mine]
    if world > 1:
        import torch.distributed as dist

        numels = [None] * world
        dist.all_gather_object(numels, mine)
    result = {
        "name": case["name"],
        "train_seconds": seconds,
        "local_numel": numels,
        "total_numel": sum(p.numel() for p in tiny_model().parameters()),
    }
    if int(os.environ.get("RANK", "0")) == 0:
        params = {k: v for k, v in state.items() if k in dict(tiny_model().named_parameters())}
        torch.save({"params": flat(params.items()), "initial": initial, **result}, out / f"{case['name']}.pt")
    return result


def main() -> None:
    out, cases = Path(sys.argv[1]), json.loads(sys.argv[2])
    started = time.perf_counter()
    for case in cases:
        run_case(case, out)
    if int(os.environ.get("RANK", "0")) == 0:
        (out / "wall.json").write_text(json.dumps({"seconds": time.perf_counter() - started}))


if __name__ == "__main__":
    main()
