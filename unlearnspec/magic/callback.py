"""MagicCallback: records the WeightedSFTTrainer's SGD/Adam/AdamW trajectory for the exact reverse pass.

Hyperparameters come in `__init__`; model-dependent state is built in `on_train_begin`, where every
setup the reverse pass cannot differentiate (momentum, amsgrad, dropout, half precision, packing) is
refused before the first step. Gradient clipping (`max_grad_norm`) is recorded and differentiated.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
from transformers import TrainerCallback

from unlearnspec.magic.checks import (
    check_model_replayable,
    check_optimizer,
    check_training_args,
    optimizer_config,
    optimizer_step_count,
    optimizer_tensors,
)
from unlearnspec.magic.trajectory import DiskStore, RamStore, Schedule, Trajectory, TrajectoryRecorder, plain_name


class MagicCallback(TrainerCallback):
    """Record parameters and optimizer state (per the checkpoint schedule), batches by row id and every step's lr.

    Use: `cb = MagicCallback(T, "sqrt"); trainer.add_callback(cb); cb.attach(trainer); trainer.train()`,
    then `cb.trajectory` feeds `magic_scores`.
    """

    def __init__(
        self,
        total_steps: int,
        schedule: Schedule = "sqrt",
        storage: str = "ram",
        storage_dir: Optional[Path] = None,
        precision: str = "fp32",
        dropout: float = 0.0,
    ):
        if storage == "disk" and storage_dir is None:
            raise ValueError("storage 'disk' needs storage_dir")
        self.total_steps = total_steps
        self.schedule: Schedule = schedule
        self.storage = storage
        self.storage_dir = storage_dir
        self.precision = precision
        self.dropout = dropout
        self.recorder: Optional[TrajectoryRecorder] = None
        self.trajectory: Optional[Trajectory] = None
        self._params: dict[str, torch.Tensor] = {}
        self._optimizer: Any = None
        self._pending: list[torch.Tensor] = []
        self._attached = False
        self._world = 1
        self._sharded = False

    def attach(self, trainer: Any) -> None:
        """Listen to the row ids of each optimizer step's micro-batches (fetched before the step begins)."""
        trainer.batch_listeners.append(self._on_batches)
        self._attached = True

    def _on_batches(self, batches: list[dict[str, torch.Tensor]], count: torch.Tensor) -> None:
        mine = [b["row_id"].detach().cpu() for b in batches]
        if self._world > 1:
            # Every rank trains its own micro-batches; the trajectory holds the GLOBAL batch of each step,
            # interleaved (rank 0's k-th micro-batch, rank 1's k-th, ...), identical on every rank. All
            # ranks get here at the same point (the Trainer gathers the token count here too).
            from unlearnspec.train.dist import gather_objects

            per_rank = gather_objects([rows.tolist() for rows in mine])
            depth = max(len(r) for r in per_rank)
            mine = [torch.tensor(r[k], dtype=torch.long) for k in range(depth) for r in per_rank if k < len(r)]
        self._pending = mine

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        if not self._attached:
            raise RuntimeError("MagicCallback.attach(trainer) must be called before training")
        check_training_args(
            packing=bool(getattr(args, "packing", False)),
            precision="bf16" if args.bf16 else "fp16" if args.fp16 else self.precision,
            dropout=self.dropout,
        )
        self._params = {plain_name(n): p for n, p in model.named_parameters() if p.requires_grad}
        self._world = int(getattr(args, "world_size", 1) or 1)
        # FSDP2 shards every parameter by rows (DTensor Shard(0)): each rank records its own shards, which the
        # sharded reverse pass (`magic.sharded`) replays on the same number of ranks.
        self._sharded = any(hasattr(p, "to_local") for p in self._params.values())
        inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the torch optimizer
        weight_decay = check_optimizer(inner, self._params)
        config = optimizer_config(
            inner, max_grad_norm=args.max_grad_norm if args.max_grad_norm and args.max_grad_norm > 0 else None
        )
        check_model_replayable(model)
        folder = self.storage_dir  # set whenever storage is disk (checked in __init__)
        if self.storage == "disk" and folder is not None and self._sharded:
            rank = int(getattr(args, "process_index", 0))
            store: DiskStore | RamStore = DiskStore(folder, write=True, tag=f"rank{rank}of{self._world}")
        elif self.storage == "disk" and folder is not None:
            store = DiskStore(folder, write=state.is_world_process_zero)
        else:
            store = RamStore()
        self._optimizer = inner
        self.recorder = TrajectoryRecorder(
            self.total_steps,
            self.schedule,
            store,
            weight_decay=weight_decay,
            optimizer=config,
            shard_world=self._world if self._sharded else 1,
        )

    def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
        assert self.recorder is not None
        lrs = {group["lr"] for group in optimizer.param_groups}
        if len(lrs) != 1:
            raise ValueError(f"parameter groups have different learning rates {sorted(lrs)}; MAGIC assumes one")
        t = self.recorder.next_step
        names = self.recorder.optimizer.state_names
        opt_state = None
        if names and self.recorder.keeps(t):
            first = next(iter(self._params.values()))
            expected = self.recorder.optimizer.initial_step + t
            if optimizer_step_count(self._optimizer, first) != expected:
                raise RuntimeError(
                    f"the optimizer is at step {optimizer_step_count(self._optimizer, first)} before step {t} "
                    f"(expected {expected}); a step was skipped or taken outside the trainer"
                )
            opt_state = {s: _local(ts) for s, ts in optimizer_tensors(self._optimizer, self._params, names).items()}
        self.recorder.begin_step(_local(self._params), lrs.pop(), opt_state)
        for rows in self._pending:
            self.recorder.add_micro_batch(rows)
        self._pending = []

    def on_train_end(self, args, state, control, **kwargs):
        assert self.recorder is not None
        self.trajectory = self.recorder.finish(_local(self._params))


def _local(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """This rank's shard of each FSDP2 (DTensor) parameter or optimizer tensor; plain tensors as they are."""
    return {n: t.to_local() if hasattr(t, "to_local") else t for n, t in tensors.items()}
