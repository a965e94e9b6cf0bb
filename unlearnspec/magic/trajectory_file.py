"""The typed `trajectory.json` of a score run (what an LDS retraining replays): every number read back is
validated as a spec's is, so a tampered file is refused with the field named instead of replaying a
different run (a NaN learning rate, a row id beyond the grid)."""

from __future__ import annotations

from typing import Annotated, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

from unlearnspec.magic.optimizers import OptimizerName
from unlearnspec.magic.trajectory import Schedule

RowId = Annotated[int, Field(ge=0, lt=2**31)]
Rate = Annotated[float, Field(ge=0.0, le=1e6)]
"""A learning rate or decay as recorded: finite, not negative (a warmup may start at 0)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)


class RecordedOptimizer(_Strict):
    """The run's optimizer as the replay needs it."""

    name: OptimizerName
    betas: list[Annotated[float, Field(ge=0.0, lt=1.0)]] = Field(min_length=2, max_length=2)
    eps: Annotated[float, Field(gt=0.0, le=1.0)]
    initial_step: Annotated[int, Field(ge=0, lt=2**31)]
    max_grad_norm: Optional[Annotated[float, Field(gt=0.0)]] = None


class RecordedStep(_Strict):
    """One optimizer step: its learning rate and the row ids of each micro-batch."""

    lr: Rate
    micro_batches: list[list[RowId]] = Field(min_length=1)


class TrajectoryFile(_Strict):
    """trajectory.json, format 1."""

    format: Literal[1]
    schedule: Schedule
    param_names: list[str] = Field(min_length=1)
    weight_decay: Union[Rate, dict[str, Rate]]
    optimizer: RecordedOptimizer
    steps: list[RecordedStep] = Field(min_length=1)
