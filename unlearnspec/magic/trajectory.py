"""What the forward (training) run records for MAGIC: lr and row ids of every step, the optimizer,
and states (theta, plus Adam's m and v) at kept steps.

States are kept at the steps of a checkpoint schedule (`all`, `sqrt`, `log`) in RAM or on disk as
safetensors; the reverse pass recomputes the others. A trainer callback feeds `TrajectoryRecorder`
step by step: `begin_step(theta_t, lr_t, optimizer_state_t)`, `add_micro_batch(row_ids)` per
micro-batch, `finish(theta_T)`. An Adam state is stored as `exp_avg/<name>` and `exp_avg_sq/<name>`
next to theta's `<name>`: three parameter-sized copies per kept step where SGD keeps one.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, Union

import torch

from unlearnspec.magic.optimizers import OptimizerConfig

Schedule = Literal["all", "sqrt", "log"]
WeightDecay = Union[float, Mapping[str, float]]
"""Weight decay: one value, or one per parameter name (HF exempts biases and norms by default)."""
SCHEDULES: tuple[str, ...] = ("all", "sqrt", "log")
Params = dict[str, torch.Tensor]


def kept_steps(schedule: Schedule, total_steps: int) -> list[int]:
    """Steps t whose state theta_t the forward run keeps (theta_T is always kept as well).

    `all`: every step. `sqrt`: every ceil(sqrt T)-th step, each segment is recomputed once in the
    reverse pass. `log`: the right spine of recursive halving (0, T/2, 3T/4, ...), O(log T) states;
    the reverse pass bisects each segment, recomputing O(T log T) steps in all.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1 (got {total_steps})")
    if schedule == "all":
        return list(range(total_steps))
    if schedule == "sqrt":
        return list(range(0, total_steps, math.ceil(math.sqrt(total_steps))))
    if schedule == "log":
        kept, lo = [0], 0
        while total_steps - lo > 1:
            lo = (lo + total_steps) // 2
            kept.append(lo)
        return kept
    raise ValueError(f"Unknown checkpoint schedule {schedule!r}. Available: {', '.join(SCHEDULES)}")


class StateStore(Protocol):
    """Parameter states by step index."""

    keeps_in_ram: bool
    """True when `get` returns the stored tensors themselves (no new copy per call)."""

    def put(self, step: int, params: Mapping[str, torch.Tensor]) -> None: ...
    def get(self, step: int) -> Params: ...
    def steps(self) -> list[int]: ...
    @property
    def ram_copies(self) -> int: ...


class RamStore:
    """States as detached copies in host memory (the reverse pass moves each to the model's device when
    it needs it, so kept states never occupy GPU memory). `device=None` keeps the parameters' device."""

    keeps_in_ram = True

    def __init__(self, device: torch.device | str | None = "cpu") -> None:
        self._states: dict[int, Params] = {}
        self.device = torch.device(device) if device is not None else None

    def put(self, step: int, params: Mapping[str, torch.Tensor]) -> None:
        if self.device is None:
            self._states[step] = {n: p.detach().clone() for n, p in params.items()}
        else:
            self._states[step] = {n: p.detach().to(self.device, copy=True) for n, p in params.items()}

    def get(self, step: int) -> Params:
        return self._states[step]

    def steps(self) -> list[int]:
        return sorted(self._states)

    @property
    def ram_copies(self) -> int:
        return len(self._states)


class DiskStore:
    """States as one safetensors file per step under `directory` (written atomically).

    Under data parallelism every rank holds the same parameters: only the rank with `write=True` (rank 0)
    writes the files, the others only note the step, and read the files after a barrier. Under FSDP each
    rank writes and reads its own shards, in files named with its `tag` (`state_0000012.rank1of4.safetensors`).
    """

    keeps_in_ram = False

    def __init__(self, directory: str | os.PathLike[str], write: bool = True, tag: str | None = None) -> None:
        if tag is not None and not tag.replace("_", "").isalnum():
            raise ValueError(f"a state file tag must be letters, digits and _ (got {tag!r})")
        self.directory = Path(directory)
        self.write = write
        self.tag = tag
        if write:
            self.directory.mkdir(parents=True, exist_ok=True)
        self._steps: set[int] = set()

    def _path(self, step: int) -> Path:
        return self.directory / (
            f"state_{step:07d}.{self.tag}.safetensors" if self.tag else f"state_{step:07d}.safetensors"
        )

    def put(self, step: int, params: Mapping[str, torch.Tensor]) -> None:
        from safetensors.torch import save_file

        if not self.write:
            self._steps.add(step)
            return
        from unlearnspec.safewrite import write_with

        tensors = {n: p.detach().contiguous().cpu() for n, p in params.items()}
        write_with(self._path(step), lambda tmp: save_file(tensors, tmp), by_path=True, durable=False)  # scratch
        self._steps.add(step)

    def get(self, step: int) -> Params:
        from safetensors.torch import load_file

        if step not in self._steps:
            raise KeyError(step)
        return load_file(self._path(step))

    def steps(self) -> list[int]:
        return sorted(self._steps)

    @property
    def ram_copies(self) -> int:
        return 0


@dataclass(frozen=True)
class Step:
    """One optimizer step: its learning rate and the row ids of each micro-batch, in order."""

    lr: float
    micro_batches: tuple[torch.Tensor, ...]

    @property
    def rows(self) -> int:
        return sum(len(mb) for mb in self.micro_batches)


CHECKPOINT_INFIX = "_checkpoint_wrapped_module."
"""What torch's activation-checkpoint wrapper (FSDP `activation_checkpointing`) inserts into parameter names."""


def plain_name(name: str) -> str:
    """A parameter's name in the model itself, without wrapper infixes: what a trajectory records, so it replays
    on a plain model (the reverse pass's skeleton, LDS retrainings)."""
    return name.replace(CHECKPOINT_INFIX, "")


def state_key(state_name: str, param_name: str) -> str:
    """Store key of one optimizer tensor (e.g. `exp_avg/gpt_neox.embed_in.weight`)."""
    return f"{state_name}/{param_name}"


@dataclass(frozen=True)
class Trajectory:
    """A recorded run: steps 0..T-1, states at `store.steps()` (always 0 and T; theta only at T)."""

    steps: tuple[Step, ...]
    store: StateStore
    schedule: Schedule
    weight_decay: WeightDecay
    param_names: tuple[str, ...]
    optimizer: OptimizerConfig = OptimizerConfig()
    """The optimizer that made the steps (plain SGD unless recorded otherwise)."""
    shard_world: int = 1
    """1: the store holds whole tensors. W > 1: it holds this rank's row shards of a W-rank FSDP run
    (`magic.sharded`), and only a W-rank sharded reverse pass can replay it."""

    def decays(self) -> list[float]:
        """Weight decay of each parameter, in `param_names` order."""
        return decay_list(self.weight_decay, self.param_names)

    @property
    def total_steps(self) -> int:
        return len(self.steps)

    @property
    def lrs(self) -> list[float]:
        return [s.lr for s in self.steps]


def decay_list(weight_decay: WeightDecay, names: Sequence[str]) -> list[float]:
    """`weight_decay` spelled out per name (a mapping must name every parameter)."""
    if isinstance(weight_decay, Mapping):
        missing = [n for n in names if n not in weight_decay]
        if missing:
            raise ValueError(f"weight_decay has no value for parameters {missing[:3]}")
        return [float(weight_decay[n]) for n in names]
    return [float(weight_decay)] * len(names)


def _row_tensor(row_ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
    rows = torch.as_tensor(row_ids, dtype=torch.long).detach().cpu().reshape(-1).clone()
    if rows.numel() == 0:
        raise ValueError("add_micro_batch got an empty micro-batch")
    return rows


class TrajectoryRecorder:
    """Builds a `Trajectory` while training runs; call order: (begin_step, add_micro_batch+)*, finish."""

    def __init__(
        self,
        total_steps: int,
        schedule: Schedule = "sqrt",
        store: StateStore | None = None,
        weight_decay: WeightDecay = 0.0,
        optimizer: OptimizerConfig = OptimizerConfig(),
        shard_world: int = 1,
    ) -> None:
        self.total_steps = total_steps
        self.shard_world = shard_world
        self.optimizer = optimizer
        self.schedule = schedule
        self.store: StateStore = store if store is not None else RamStore()
        self.weight_decay: WeightDecay = (
            dict(weight_decay) if isinstance(weight_decay, Mapping) else float(weight_decay)
        )
        self._kept = set(kept_steps(schedule, total_steps))
        self._steps: list[Step] = []
        self._lr: float | None = None
        self._micro: list[torch.Tensor] = []
        self._names: tuple[str, ...] | None = None

    def _check_params(self, params: Mapping[str, torch.Tensor]) -> None:
        names = tuple(params)
        if self._names is None:
            self._names = names
        elif names != self._names:
            raise ValueError(
                "the parameter names changed between steps; record the same trainable parameters every step"
            )

    def _close_step(self) -> None:
        if self._lr is None:
            return
        if not self._micro:
            raise ValueError(
                f"step {len(self._steps)} has no micro-batch; call add_micro_batch(row_ids) after begin_step"
            )
        self._steps.append(Step(self._lr, tuple(self._micro)))
        self._lr, self._micro = None, []

    def keeps(self, step: int) -> bool:
        """Whether the state before `step` is stored (callers may skip building an optimizer state otherwise)."""
        return step in self._kept

    @property
    def next_step(self) -> int:
        """Index of the step the next `begin_step` opens."""
        return len(self._steps) + (self._lr is not None)

    def begin_step(
        self,
        params: Mapping[str, torch.Tensor],
        lr: float,
        optimizer_state: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
    ) -> None:
        """Call before optimizer step t updates the parameters, with theta_t, the step's lr and, for Adam,
        the optimizer's tensors before the step: {"exp_avg": {name: m_t}, "exp_avg_sq": {name: v_t}}
        (zeros before the first step). The state is read only at kept steps."""
        self._close_step()
        t = len(self._steps)
        if t >= self.total_steps:
            raise ValueError(f"begin_step called for step {t}, but the recorder was sized for {self.total_steps} steps")
        self._check_params(params)
        if t in self._kept:
            self.store.put(t, self._with_state(params, optimizer_state))
        self._lr = float(lr)

    def _with_state(
        self, params: Mapping[str, torch.Tensor], optimizer_state: Mapping[str, Mapping[str, torch.Tensor]] | None
    ) -> dict[str, torch.Tensor]:
        flat = dict(params)
        names = self.optimizer.state_names
        if not names:
            return flat
        if optimizer_state is None or set(optimizer_state) != set(names):
            got = sorted(optimizer_state) if optimizer_state is not None else None
            raise ValueError(
                f"a {self.optimizer.name} trajectory needs the optimizer state {list(names)} at kept steps (got {got})"
            )
        for state_name in names:
            tensors = optimizer_state[state_name]
            for name, p in params.items():
                if name not in tensors:
                    raise ValueError(f"optimizer state {state_name} lacks parameter {name}")
                if tensors[name].shape != p.shape:
                    raise ValueError(
                        f"optimizer state {state_name} of {name} has shape {tuple(tensors[name].shape)}, not {tuple(p.shape)}"
                    )
                flat[state_key(state_name, name)] = tensors[name]
        return flat

    def add_micro_batch(self, row_ids: Sequence[int] | torch.Tensor) -> None:
        """Row ids (indices into the token grid) of one micro-batch of the current step."""
        if self._lr is None:
            raise ValueError("add_micro_batch called before begin_step")
        self._micro.append(_row_tensor(row_ids))

    def finish(self, params: Mapping[str, torch.Tensor]) -> Trajectory:
        """Call after the last optimizer step with theta_T."""
        self._close_step()
        if not self._steps:
            raise ValueError("finish called before any step was recorded")
        self._check_params(params)
        assert self._names is not None
        decay_list(self.weight_decay, self._names)  # a per-name mapping must cover every parameter
        self.store.put(len(self._steps), params)
        return Trajectory(
            tuple(self._steps),
            self.store,
            self.schedule,
            self.weight_decay,
            self._names,
            self.optimizer,
            self.shard_world,
        )


def plan_steps(
    n_rows: int,
    steps: int,
    batch_size: int,
    lr: float | Sequence[float],
    grad_accum: int = 1,
    seed: int | None = 0,
) -> list[Step]:
    """A simple epoch-wise batch plan over `n_rows` rows (shuffled per epoch when `seed` is set)."""
    lrs = [float(lr)] * steps if isinstance(lr, (int, float)) else [float(x) for x in lr]
    if len(lrs) != steps:
        raise ValueError(f"got {len(lrs)} learning rates for {steps} steps")
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    order: list[int] = []
    plan = []
    for t in range(steps):
        micro = []
        for _ in range(grad_accum):
            while len(order) < batch_size:
                epoch = torch.randperm(n_rows, generator=gen) if gen is not None else torch.arange(n_rows)
                order.extend(epoch.tolist())
            micro.append(torch.tensor(order[:batch_size], dtype=torch.long))
            order = order[batch_size:]
        plan.append(Step(lrs[t], tuple(micro)))
    return plan


def split_micro_batches(steps: Iterable[Step], grad_accum: int) -> list[Step]:
    """The same steps with each step's rows re-split into `grad_accum` micro-batches (for tests)."""
    out = []
    for step in steps:
        rows = torch.cat(step.micro_batches)
        out.append(Step(step.lr, tuple(c for c in rows.tensor_split(grad_accum) if c.numel())))
    return out
